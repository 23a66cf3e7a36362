"""A run interrupted at any write point resumes to the uninterrupted run's result.

Every write point of a small federated run with client-level DP and a signed ledger (and
of a centralized run) is interrupted in turn, then the folder is resumed: with seeded noise
the final `model.pt`, metrics and ledger root equal the uninterrupted run's; with noise
from the OS (the default) the resumed run keeps every round it published and the ledger
verifies. Real SIGKILLs (a subprocess) at the points that used to break resume, a full
disk at every point, and an edited config are covered too.
"""

from __future__ import annotations

import gc
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from faults import Crash, inject

from fedmeta.cli import main
from fedmeta.config import Config
from fedmeta.federated.driver import run_federated
from fedmeta.federated.record import default_server_key
from fedmeta.ledger import keys, verify_ledger
from fedmeta.rundir import RunDir
from fedmeta.train import train

HERE = Path(__file__).resolve().parent


def federated_config(noise_seed: int | None) -> Config:
    return Config.model_validate({
        "run": {"seed": 1},
        "data": {"name": "sinusoid", "k_shot": 4, "k_query": 4},
        "model": {"name": "mlp", "hidden": [8]},
        "meta": {"inner_lr": 0.01, "eval_inner_steps": 1},
        "federated": {"rounds": 3, "n_clients": 8, "held_out_clients": 2, "clients_per_round": 4, "eval_every": 2,
                      "clients": {"local_steps": 1, "tasks_per_step": 2, "lr": 0.01},
                      "server": {"strategy": "fedadam"}},
        "privacy": {"dp": "central", "clip_norm": 1.0, "noise_multiplier": 0.8, "noise_seed": noise_seed},
        "ledger": {"enabled": True},
    })


def centralized_config() -> Config:
    return Config.model_validate({
        "run": {"seed": 2}, "data": {"name": "sinusoid"}, "model": {"name": "mlp", "hidden": [8]},
        "meta": {"meta_batch_size": 2}, "train": {"iterations": 4, "eval_every": 2, "eval_tasks": 4},
    })


def drive(cfg: Config, out: Path, resume: bool = False) -> dict:
    run = RunDir.open(out, lock=True)[0] if resume else RunDir.create(out, cfg)
    try:
        driver = run_federated if cfg.federated is not None else train
        return driver(cfg, run, resume=resume, show_progress=False)
    finally:
        run.close()


def interrupted(cfg: Config, out: Path, at: int) -> None:
    with pytest.raises(Crash), inject(at):
        drive(cfg, out)
    gc.collect()  # the crashed run's open ledger connection goes, as a killed process's would


def recover(cfg: Config, out: Path) -> dict:
    """`--resume`, or the same command again when the folder never got its config."""
    return drive(cfg, out, resume=(out / "config.toml").exists())


def rounds_in_ledger(out: Path) -> list[tuple[int, str]]:
    if not (out / "ledger.db").exists():
        return []
    with sqlite3.connect(out / "ledger.db") as db:
        bodies = [json.loads(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY idx")]
    return [(e["round"], e["model_sha256"]) for e in bodies if e["type"] == "round"]


def model(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "model.pt", weights_only=True)


def same_model(a: Path, b: Path) -> bool:
    x, y = model(a), model(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def visible_points(points: list[str]) -> list[int]:
    """The write points that change what a crash leaves on disk: an fsync before a rename
    leaves what the rename would have found (the slow SIGKILL sweep takes every point)."""
    return [i + 1 for i, p in enumerate(points) if p != "fsync" or i + 1 == len(points)]


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    """A server key made beforehand: every run then meets the same write points."""
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    keys.load_or_create_private_key(default_server_key())
    return tmp_path / "home"


@pytest.mark.parametrize("noise_seed", [7, None], ids=["seeded", "os-noise"])
def test_federated_run_resumes_from_every_write_point(tmp_path, home, noise_seed):
    cfg = federated_config(noise_seed)
    with inject(how="count") as counter:
        reference = drive(cfg, tmp_path / "reference")
    assert counter.seen > 30, counter.points  # every publication of 4 steps and the end
    key = reference["ledger"]["server_public_key"]
    for at in visible_points(counter.points):
        out = tmp_path / f"killed-{at}"
        interrupted(cfg, out, at)
        published = rounds_in_ledger(out)
        summary = recover(cfg, out)
        where = f"interrupted at write point {at} ({counter.points[at - 1]})"
        assert verify_ledger(out, public_key=key), where
        history = rounds_in_ledger(out)
        assert [r for r, _ in history] == [1, 2, 3], where
        assert history[: len(published)] == published, where  # nothing published is redone
        rows = metric_rows(out)
        assert [(r["round"], r["split"]) for r in rows] == [
            (r["round"], r["split"]) for r in metric_rows(tmp_path / "reference")], where
        if noise_seed is not None:
            assert same_model(out, tmp_path / "reference"), where
            assert rows == metric_rows(tmp_path / "reference"), where
            assert history == rounds_in_ledger(tmp_path / "reference"), where
            assert summary["final"] == reference["final"], where


def test_centralized_run_resumes_from_every_write_point(tmp_path):
    cfg = centralized_config()
    with inject(how="count") as counter:
        reference = drive(cfg, tmp_path / "reference")
    for at in visible_points(counter.points):
        out = tmp_path / f"killed-{at}"
        interrupted(cfg, out, at)
        summary = recover(cfg, out)
        where = f"interrupted at write point {at} ({counter.points[at - 1]})"
        assert same_model(out, tmp_path / "reference"), where
        assert metric_rows(out) == metric_rows(tmp_path / "reference"), where
        assert summary["final"] == reference["final"], where


def write_config(cfg: Config, path: Path) -> Path:
    path.write_text(cfg.to_toml())
    return path


def test_a_full_disk_at_any_write_point_fails_resumably(tmp_path, home, capsys):
    """ENOSPC anywhere: exit 1 naming the resume command, and the resume completes."""
    config = write_config(federated_config(3), tmp_path / "fed.toml")
    with inject(how="count") as counter:
        assert main(["run", str(config), "--out", str(tmp_path / "reference"), "--no-progress"]) == 0
    for at in range(1, counter.seen + 1, 4):
        out = tmp_path / f"full-{at}"
        with inject(at, how="enospc"):
            code = main(["run", str(config), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        if code == 0:  # the point was in the report, which is written after the run is done
            continue
        assert code == 1 and len(err.strip().splitlines()) <= 2, (at, err)  # "run folder: ..." + the error
        gc.collect()
        if (out / "config.toml").exists():
            assert f"fedmeta run --resume {out}" in err, (at, err)
            assert main(["run", "--resume", str(out), "--no-progress"]) == 0, capsys.readouterr().err
        else:  # nothing started: the same command again
            assert "run the same command again" in err, (at, err)
            assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0, capsys.readouterr().err
        capsys.readouterr()
        assert same_model(out, tmp_path / "reference"), at


def sigkilled_cli(args: list[str], at: int, home: Path) -> int:
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); from faults import inject; "
            f"from fedmeta.cli import main\nwith inject({at}, how='sigkill'): sys.exit(main({args!r}))")
    env = {**os.environ, "FEDMETA_HOME": str(home)}
    return subprocess.run([sys.executable, "-c", code], env=env, timeout=300, capture_output=True).returncode


def test_sigkill_after_commit_before_ledger_resumes_with_os_noise(tmp_path, home):
    """A real SIGKILL between a round's checkpoint and its ledger entry, with noise from the
    OS: the resumed run publishes that round's committed model instead of drawing it anew
    (before: `round 5 model on resume: expected 62bf…, got a832…` on every resume)."""
    config = write_config(federated_config(None), tmp_path / "fed.toml")
    with inject(how="count") as counter:
        assert main(["run", str(config), "--out", str(tmp_path / "count"), "--no-progress"]) == 0
    appends = [i + 1 for i, p in enumerate(counter.points) if p.startswith("ledger append ['round']")]
    start = next(i + 1 for i, p in enumerate(counter.points) if p.startswith("ledger append ['start']"))
    for at in (start, appends[1]):
        out = tmp_path / f"killed-{at}"
        assert sigkilled_cli(["run", str(config), "--out", str(out), "--no-progress"], at, home) == -9
        assert (out / "checkpoint.pt").exists()
        env = {**os.environ, "FEDMETA_HOME": str(home)}
        done = subprocess.run([sys.executable, "-m", "fedmeta", "run", "--resume", str(out), "--no-progress"],
                              env=env, timeout=300, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert [r for r, _ in rounds_in_ledger(out)] == [1, 2, 3]
        verify_ledger(out)


@pytest.mark.slow
@pytest.mark.timeout(2400)  # two processes per write point: about 10 minutes on 2 cores
@pytest.mark.parametrize("noise_seed", [5, None], ids=["seeded", "os-noise"])
def test_sigkill_at_every_write_point(tmp_path, home, noise_seed):
    """The in-process sweep above, with real SIGKILLs (leftover temporary files, open
    SQLite transactions, a held lock released by the kernel)."""
    config = write_config(federated_config(noise_seed), tmp_path / "fed.toml")
    env = {**os.environ, "FEDMETA_HOME": str(home)}
    with inject(how="count") as counter:
        assert main(["run", str(config), "--out", str(tmp_path / "reference"), "--no-progress"]) == 0
    for at in range(1, counter.seen + 1):
        out = tmp_path / f"killed-{at}"
        code = sigkilled_cli(["run", str(config), "--out", str(out), "--no-progress"], at, home)
        assert code in (-9, 0), code
        again = ["--resume", str(out)] if (out / "config.toml").exists() else [str(config), "--out", str(out)]
        done = subprocess.run([sys.executable, "-m", "fedmeta", "run", *again, "--no-progress"],
                              env=env, timeout=300, capture_output=True, text=True)
        assert done.returncode == 0, (at, counter.points[at - 1], done.stderr)
        verify_ledger(out)
        if noise_seed is not None:
            assert same_model(out, tmp_path / "reference"), (at, counter.points[at - 1])
