"""A run folder has one writer, never runs code from its files, and says when it is done.

Each case failed before: two `--resume` on one folder both ran and wrote rounds twice; two
new runs raced for one `--out`; a crafted `checkpoint.pt` ran code on `--resume`; corrupt
checkpoints gave tracebacks; an edited `config.toml` resumed silently.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.config import Config
from fedmeta.rundir import RunDir

ROOT = Path(__file__).resolve().parents[2]
TINY = ["--set", "train.iterations=6", "--set", "train.eval_every=3", "--set", "train.eval_tasks=4",
        "--set", "meta.meta_batch_size=2", "--no-progress"]
SINUSOID = str(ROOT / "configs" / "sinusoid-maml.toml")


def one_line_exit_2(capsys, args: list[str], *named: str) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and all(n in err[0] for n in named), err
    return err[0]


@pytest.fixture
def stopped(tmp_path, monkeypatch) -> Path:
    """A run stopped after its second evaluation (a checkpoint, no model yet)."""
    from fedmeta.meta.base import MetaLearner

    out, original, calls = tmp_path / "run", MetaLearner.meta_gradient, {"n": 0}

    def failing(self, meta, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated failure")
        return original(self, meta, batch)

    monkeypatch.setattr(MetaLearner, "meta_gradient", failing)
    assert main(["run", SINUSOID, "--out", str(out), *TINY]) == 1
    monkeypatch.setattr(MetaLearner, "meta_gradient", original)
    assert (out / "checkpoint.pt").exists() and not (out / "model.pt").exists()
    return out


def test_a_second_writer_is_refused_with_the_holders_pid(stopped, capsys):
    holder, _ = RunDir.open(stopped, lock=True)
    line = one_line_exit_2(capsys, ["run", "--resume", str(stopped), "--no-progress"], "--resume", "in use")
    assert f"PID {os.getpid()}" in line
    holder.close()
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0


def test_a_new_run_is_refused_while_another_holds_the_folder(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = RunDir(out)
    holder.lock("--out")
    one_line_exit_2(capsys, ["run", SINUSOID, "--out", str(out), *TINY], "--out", f"PID {os.getpid()}")
    assert not (out / "config.toml").exists()
    holder.close()


def test_two_new_runs_racing_for_one_folder_one_wins(tmp_path):
    out = tmp_path / "raced"
    cmd = [sys.executable, "-m", "fedmeta", "run", SINUSOID, "--out", str(out), *TINY]
    procs = [subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = sorted((p.wait(timeout=300), p.stderr.read()) for p in procs)
    assert [code for code, _ in results] == [0, 2], results
    assert "--out" in results[1][1]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["round"], r["split"]) for r in rows] == [(i, s) for i in (0, 3, 6) for s in ("test", "train")]


class Payload:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_crafted_checkpoint_runs_no_code(stopped, tmp_path, capsys):
    marker = tmp_path / "pwned"
    torch.save({"format": 2, "payload": Payload(str(marker))}, stopped / "checkpoint.pt")
    one_line_exit_2(capsys, ["run", "--resume", str(stopped), "--no-progress"], "checkpoint.pt", "cannot be resumed")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["empty", "truncated", "garbage", "directory", "unpickler-index", "unpickler-key"])
def test_a_damaged_checkpoint_is_one_line_naming_the_file(stopped, capsys, damage):
    ck = stopped / "checkpoint.pt"
    data = ck.read_bytes()
    if damage == "directory":
        ck.unlink()
        ck.mkdir()
    else:
        ck.write_bytes({"empty": b"", "truncated": data[: len(data) // 2], "garbage": os.urandom(200),
                         # bytes on which torch's unpickler raises IndexError and KeyError
                         "unpickler-index": random.Random(2).randbytes(200),
                         "unpickler-key": random.Random(20).randbytes(200)}[damage])
    one_line_exit_2(capsys, ["run", "--resume", str(stopped), "--no-progress"], str(ck), "cannot be resumed")


def test_an_edited_config_does_not_resume(stopped, capsys):
    cfg = stopped / "config.toml"
    cfg.write_text(cfg.read_text().replace("inner_lr = ", "inner_lr = 0.5 #"))
    one_line_exit_2(capsys, ["run", "--resume", str(stopped), "--no-progress"], "config.toml", "keeps its config")


def test_resume_of_a_finished_run_says_so(tmp_path, capsys):
    out = tmp_path / "done"
    assert main(["run", SINUSOID, "--out", str(out), *TINY]) == 0
    capsys.readouterr()
    before = (out / "metrics.jsonl").read_bytes()
    (out / "report.html").unlink()  # as if killed while the report was written
    assert main(["run", "--resume", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already finished" in err[0], err
    assert (out / "report.html").is_file() and (out / "metrics.jsonl").read_bytes() == before


def test_out_that_is_a_file_or_unwritable(tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    one_line_exit_2(capsys, ["run", SINUSOID, "--out", str(afile), *TINY], "--out", "this is a file")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_exit_2(capsys, ["run", SINUSOID, "--out", str(locked / "x"), *TINY], "--out")
    one_line_exit_2(capsys, ["run", SINUSOID, "--out", str(afile / "below"), *TINY], "--out")


def test_checkpoints_load_without_pickled_code(tmp_path):
    """Every checkpoint fedmeta writes loads with weights_only=True (centralized and federated)."""
    cfg = Config.model_validate({"data": {"name": "sinusoid"}, "model": {"name": "mlp", "hidden": [8]},
                                 "train": {"iterations": 2, "eval_every": 1, "eval_tasks": 2}})
    run = RunDir.create(tmp_path / "c", cfg)
    from fedmeta.train import train

    train(cfg, run, show_progress=False)
    run.close()
    state = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert state["format"] == 2 and "final" in state["publish"]


def test_a_start_refused_by_the_runtime_leaves_no_folder(tmp_path, capsys):
    """Checks that need the data or the accountant (here: a target ε below one round's) run
    before the folder exists; before, the folder then blocked the same command."""
    out = tmp_path / "never"
    args = ["run", "--out", str(out), "--set", "privacy.target_epsilon=0.0001", "--no-progress"]
    one_line_exit_2(capsys, args, "privacy.target_epsilon")
    assert not out.exists()


@pytest.mark.parametrize("noise_seed", [None, 3])
def test_a_dp_run_says_whether_its_noise_is_reproducible(tmp_path, capsys, monkeypatch, noise_seed):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    args = ["run", "--out", str(tmp_path / "r"), "--set", "federated.rounds=1", "--set", "federated.n_clients=6",
            "--set", "federated.clients_per_round=4", "--set", "privacy.secure_aggregation='off'", "--no-progress"]
    seeded = [] if noise_seed is None else ["--set", f"privacy.noise_seed={noise_seed}"]
    assert main([*args, *seeded]) == 0
    err = capsys.readouterr().err
    assert ("operating system's randomness" in err) == (noise_seed is None), err
