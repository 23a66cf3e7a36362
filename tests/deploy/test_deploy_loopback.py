"""A real deployment on loopback: `fedmeta deploy local` starts flower-superlink, three
flower-supernode processes and `flwr run`; the run folder must hold what an in-process run
of the same config holds, with the same final parameters (seeded example-level DP, top-k
residuals kept by each supernode), and a ledger that verifies. Every Flower process is torn down, also on failure."""

import json

import pytest
import torch

from fedmeta.cli import main
from fedmeta.ledger import verify_ledger
from fedmeta.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")


@pytest.mark.slow
def test_loopback_deployment_equals_the_in_process_run(config, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    cfg = config(privacy={"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5,
                               "clip_norm": 1.0, "delta": 1e-5, "noise_seed": 7},
                 rounds=3, compression="topk", topk_fraction=0.3)  # the residual must live in each node's context
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"enabled": True})})
    (tmp_path / "cfg.toml").write_text(cfg.to_toml())
    assert main(["run", str(tmp_path / "cfg.toml"), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert main(["deploy", "local", str(tmp_path / "cfg.toml"), "--clients", "3", "--out", str(tmp_path / "flower")]) == 0
    local, flower = RunDir(tmp_path / "local"), RunDir(tmp_path / "flower")
    a, b = torch.load(local.path / "model.pt"), torch.load(flower.path / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = ("seconds", "ledger")
    sa, sb = (json.loads((r.path / "summary.json").read_text()) for r in (local, flower))
    assert {k: v for k, v in sa.items() if k not in strip} == {k: v for k, v in sb.items() if k not in strip}
    rows = [(m["round"], m["split"], m["epsilon"], m["bytes_up"]) for m in flower.metrics()]
    assert rows == [(m["round"], m["split"], m["epsilon"], m["bytes_up"]) for m in local.metrics()]
    verify_ledger(flower.path, public_key=sb["ledger"]["server_public_key"])
    assert (flower.path / "report.html").is_file()
