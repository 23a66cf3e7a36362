"""`run.tensorboard = true`: the event files hold every metrics row's figures, read back with
TensorBoard's own reader; a run without it writes none; a central run refuses it."""

import json

import pytest
import tomli_w

from fedmeta.cli import main

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")

CONFIG = {
    "run": {"name": "tb", "seed": 0, "tensorboard": True},
    "data": {"name": "sinusoid", "k_shot": 5, "k_query": 5},
    "model": {"name": "mlp", "hidden": [16]},
    "meta": {"inner_lr": 0.01, "eval_inner_steps": 2},
    "federated": {"rounds": 3, "n_clients": 6, "held_out_clients": 2, "clients_per_round": 3, "eval_every": 2,
                  "clients": {"local_steps": 1, "tasks_per_step": 2}},
    "privacy": {"dp": "central", "noise_multiplier": 0.5, "clip_norm": 1.0, "noise_seed": 1},
}


def test_the_event_files_hold_the_metrics_rows(tmp_path):
    (tmp_path / "c.toml").write_text(tomli_w.dumps(CONFIG))
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    expected = {}
    for row in rows:
        for key, value in row.items():
            if key not in ("round", "split") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(f"{row['split']}/{key}", []).append((row["round"], float(value)))
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        got = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in got] == [s for s, _ in points], tag
        assert [v for _, v in got] == pytest.approx([v for _, v in points], rel=1e-6), tag  # float32 on disk
    assert "test/acc_after" not in expected and "test/loss_after" in expected and "round/epsilon" in expected


def test_without_it_no_event_files_and_a_central_run_refuses_it(tmp_path, capsys):
    plain = {**CONFIG, "run": {"name": "plain", "seed": 0}}
    (tmp_path / "p.toml").write_text(tomli_w.dumps(plain))
    assert main(["run", str(tmp_path / "p.toml"), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    assert not (tmp_path / "run" / "tensorboard").exists()
    central = {k: v for k, v in CONFIG.items() if k not in ("federated", "privacy")}
    (tmp_path / "c.toml").write_text(tomli_w.dumps(central))
    assert main(["run", str(tmp_path / "c.toml"), "--out", str(tmp_path / "central"), "--no-progress"]) == 2
    assert "run.tensorboard" in capsys.readouterr().err and not (tmp_path / "central").exists()
