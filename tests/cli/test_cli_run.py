"""`fedmeta run` end to end on a tiny sinusoid run: files, exit codes, one-line errors, resume."""

import json
from pathlib import Path

import pytest
import torch

from fedmeta.cli import main
from fedmeta.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SINUSOID = str(ROOT / "configs" / "sinusoid-maml.toml")
TINY = ["--set", "train.iterations=30", "--set", "train.eval_every=10", "--set", "train.eval_tasks=20", "--no-progress"]


def test_run_writes_the_run_folder(tmp_path):
    out = tmp_path / "run"
    assert main(["run", SINUSOID, "--out", str(out), *TINY]) == 0
    for name in ("config.toml", "metrics.jsonl", "summary.json", "model.pt", "report.html", "loss.png"):
        assert (out / name).is_file(), name
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows if r["split"] == "test"] == [0, 10, 20, 30]
    assert all({"round", "split", "loss_before", "loss_after"} <= r.keys() for r in rows)
    assert "iterations = 30" in (out / "config.toml").read_text()


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--set", "meta.inner_stepz=2"], "meta.inner_stepz"),
        (["--set", "meta.inner_lr=-0.1"], "meta.inner_lr"),
        (["--set", "data.name=imagenet"], "data.name"),
        (["--set", "train.iterations=0"], "train.iterations"),
        (["--set", "novalue"], "--set"),
    ],
)
def test_bad_config_exits_2_with_one_line(tmp_path, capsys, args, named):
    assert main(["run", SINUSOID, "--out", str(tmp_path / "r"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err


def test_bad_key_in_file_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[meta]\nalgorithm = "maml"\nouter = 3\n')
    assert main(["run", str(bad), "--out", str(tmp_path / "a")]) == 2
    assert "meta.outer" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    assert "nope.toml" in capsys.readouterr().err


def test_resume_after_failure_matches_uninterrupted_run(tmp_path, monkeypatch, capsys):
    full, broken = tmp_path / "full", tmp_path / "broken"
    assert main(["run", SINUSOID, "--out", str(full), *TINY]) == 0

    from fedmeta.meta.base import MetaLearner

    original, calls = MetaLearner.meta_gradient, {"n": 0}

    def failing(self, meta, batch):
        calls["n"] += 1
        if calls["n"] == 25:
            raise RuntimeError("simulated crash")
        return original(self, meta, batch)

    monkeypatch.setattr(MetaLearner, "meta_gradient", failing)
    assert main(["run", SINUSOID, "--out", str(broken), *TINY]) == 1
    assert "--resume" in capsys.readouterr().err
    monkeypatch.setattr(MetaLearner, "meta_gradient", original)
    assert main(["run", "--resume", str(broken), "--no-progress"]) == 0
    a, b = torch.load(full / "model.pt"), torch.load(broken / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (full / "metrics.jsonl").read_text() == (broken / "metrics.jsonl").read_text()


def test_refuses_to_overwrite_a_run(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", SINUSOID, "--out", str(out), *TINY]) == 0
    assert main(["run", SINUSOID, "--out", str(out), *TINY]) == 2
    assert "--out" in capsys.readouterr().err


def test_default_demo_runs_with_dp_secagg_and_a_verifiable_ledger(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    out = tmp_path / "demo"
    short = ["--set", "federated.rounds=2", "--set", "federated.eval_every=1", "--no-progress"]
    assert main(["run", "--out", str(out), *short]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "federated" and summary["epsilon"] > 0 and summary["ledger"]["verified"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all("epsilon" in r for r in rows) and any(r.get("secagg_bytes_up") for r in rows)
    assert main(["ledger", "verify", str(out), "--public-key", summary["ledger"]["server_public_key"]]) == 0


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_example_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.run.name == path.stem


def test_a_diverged_run_finishes_and_says_so(tmp_path, capsys):
    """A server step of 1e30 makes every final figure NaN: the run still ends, its summary
    and ledger hold null (JSON has no NaN) and name the figures, the ledger verifies and the
    report skips the histogram it cannot draw."""
    from fedmeta.ledger import verify_ledger

    cfg = tmp_path / "fed.toml"
    cfg.write_text('[data]\nname = "sinusoid"\nk_shot = 5\nk_query = 5\n[model]\nname = "mlp"\nhidden = [8]\n'
                   '[federated]\nrounds = 1\nn_clients = 4\nheld_out_clients = 2\nclients_per_round = 2\n'
                   'local_steps = 1\ntasks_per_step = 2\nstrategy = "fedadam"\nserver_lr = 1e30\n[ledger]\nenabled = true\n')
    out = tmp_path / "run"
    assert main(["run", str(cfg), "--out", str(out), "--no-progress"]) == 0
    done = [line for line in capsys.readouterr().out.splitlines() if line.startswith("done:")]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["non_finite"] and all(summary["final"][k] is None for k in summary["non_finite"])
    assert "diverged: " + ", ".join(summary["non_finite"]) + " not finite" in done[0]
    verify_ledger(out)
    assert (out / "report.html").is_file() and not (out / "personalization.png").exists()
