"""`fedmeta run --seeds N --sweep KEY=V1,V2`: per-seed runs and their aggregate, a grid that
continues after a crash without rerunning what finished, one-line refusals before anything
is written."""

import json
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from fedmeta.cli import main
from fedmeta.federated.runtime import Runtime
from fedmeta.sweep import split_values

TINY = """
[run]
name = "tiny"
seed = 3
[data]
name = "sinusoid"
k_shot = 5
k_query = 5
[model]
name = "mlp"
hidden = [16, 16]
[meta]
inner_lr = 0.01
eval_inner_steps = 2
[federated]
rounds = 2
n_clients = 6
held_out_clients = 3
clients_per_round = 3
eval_every = 1
[federated.clients]
procedure = "fedmeta"
local_steps = 2
tasks_per_step = 2
lr = 0.01
[privacy]
audit = false
"""


@pytest.fixture(autouse=True)
def no_reports(monkeypatch):
    """No HTML report per run: most of a tiny run's time, and not what is checked here."""
    monkeypatch.setattr("fedmeta.report.write_report", lambda run_dir: Path(run_dir) / "report.html")


def tiny_config(folder: Path) -> str:
    """A federated sinusoid config of two rounds of three clients (seed 3), as a file."""
    path = folder / "tiny.toml"
    path.write_text(TINY)
    return str(path)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_seeds_write_per_seed_runs_and_their_aggregate(tmp_path):
    out = tmp_path / "seeds"
    assert main(["run", tiny_config(tmp_path), "--out", str(out), "--seeds", "2", "--no-progress"]) == 0
    runs = [out / "seed-3", out / "seed-4"]
    assert [tomllib.loads((r / "config.toml").read_text())["run"]["seed"] for r in runs] == [3, 4]
    summaries = [read(r / "summary.json") for r in runs]
    assert summaries[0]["final"]["loss_after"] != summaries[1]["final"]["loss_after"]
    figures = read(out / "aggregate.json")["figures"]
    numeric = {k for k, v in summaries[0]["final"].items() if isinstance(v, (int, float))}
    assert set(figures) == numeric | {"bytes_up_total", "bytes_down_total", "seconds"}
    for key, figure in figures.items():
        values = [s["final"][key] if key in s["final"] else s[key] for s in summaries]
        sd = np.std(values, ddof=1)
        half = stats.t.ppf(0.975, 1) * sd / math.sqrt(2)
        assert figure["n"] == 2
        assert figure["mean"] == pytest.approx(np.mean(values), rel=1e-12)
        assert figure["sd"] == pytest.approx(sd, rel=1e-12, abs=1e-12)
        assert figure["ci95"] == pytest.approx([np.mean(values) - half, np.mean(values) + half], rel=1e-9, abs=1e-9)


def test_interrupted_sweep_continues_where_it_stopped(tmp_path, monkeypatch, capsys):
    config, out = tiny_config(tmp_path), tmp_path / "grid"
    command = ["run", config, "--out", str(out), "--sweep", "federated.rounds=1,2", "--no-progress"]
    original, calls = Runtime.run_round, {"n": 0}

    def crashing(self):
        calls["n"] += 1  # cell 1 runs round 1; cell 2 rounds 1 and 2
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(Runtime, "run_round", crashing)
    assert main(command) == 1
    assert "the same command continues the grid" in capsys.readouterr().err
    first, second = out / "federated.rounds=1" / "seed-3", out / "federated.rounds=2" / "seed-3"
    assert (second / "checkpoint.pt").is_file() and not (second / "summary.json").exists()
    finished = (first / "summary.json").stat().st_mtime_ns, (first / "summary.json").read_bytes()

    monkeypatch.setattr(Runtime, "run_round", original)
    assert main(command) == 0
    err = capsys.readouterr().err
    assert "cell 1/2 federated.rounds=1 seed 3: finished before" in err
    assert "cell 2/2 federated.rounds=2 seed 3: resuming" in err
    assert ((first / "summary.json").stat().st_mtime_ns, (first / "summary.json").read_bytes()) == finished

    reference = tmp_path / "reference"
    assert main(["run", config, "--out", str(reference), "--set", "federated.rounds=2", "--no-progress"]) == 0
    capsys.readouterr()
    resumed, uninterrupted = torch.load(second / "model.pt"), torch.load(reference / "model.pt")
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)

    cells = read(out / "sweep.json")["cells"]
    assert [c["overrides"] for c in cells] == [{"federated.rounds": "1"}, {"federated.rounds": "2"}]
    for cell in cells:
        loss = read(out / cell["folder"] / "seed-3" / "summary.json")["final"]["loss_after"]
        assert cell["aggregate"]["loss_after"] == {"mean": loss, "sd": None, "n": 1, "ci95": None}

    assert main([*command[:-2], "federated.rounds=1,3", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0] and "another grid" in err[0], err


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--sweep", "nokey"], "--sweep"),
        (["--seeds", "0"], "--seeds"),
        (["--sweep", "meta.nokey=1,2"], "--sweep meta.nokey"),
        (["--sweep", "meta.inner_lr=0.1,-1"], "--sweep meta.inner_lr"),
        (["--sweep", "federated.rounds=1,1"], "--sweep"),
        (["--seeds", "2", "--resume", "somewhere"], "--seeds"),
    ],
)
def test_bad_grid_exits_2_with_one_line_before_any_folder(tmp_path, capsys, args, named):
    out = tmp_path / "grid"
    assert main(["run", tiny_config(tmp_path), "--out", str(out), *args, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and named in err[0], err
    assert not out.exists()


def test_sweep_values_split_outside_brackets_and_quotes():
    assert split_values("1, [2,3],'a,b',{x = 1, y = 2}") == ["1", "[2,3]", "'a,b'", "{x = 1, y = 2}"]
