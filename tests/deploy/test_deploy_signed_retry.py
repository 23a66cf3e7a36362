"""A signed deployed round retried after a node fails in attempt 0 completes: every update
is signed for its attempt, so the retry is not refused as a replay."""
import pytest
from flwr.app import Error, Message

from fedmeta.federated.driver import run_federated
from fedmeta.ledger import verify_ledger
from fedmeta.rundir import RunDir


@pytest.mark.parametrize("secure", ["off", "secagg+"])
def test_signed_deployed_round_survives_a_retry(config, grid_factory, deployed, client_keys, tmp_path, monkeypatch, secure):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    registered = client_keys(tmp_path, 3)
    cfg = config("sinusoid", clients_per_round=3, min_clients=3, max_retries=2, privacy={"secure_aggregation": secure})
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"enabled": True, "participants": registered})})
    grid = grid_factory(3)
    for i, ctx in enumerate(grid.contexts.values()):
        ctx.node_config["key"] = str(tmp_path / f"{i}.pem")
    inner = grid.send_and_receive

    def flaky(messages, *, timeout=None):  # node 102 fails every message of round 1's attempt 0
        out = inner(messages, timeout=timeout)
        return [Message(error=Error(code=1, reason="down"), reply_to=m)
                if m.metadata.group_id == "1.0" and r.metadata.src_node_id == 102 and not r.has_error() else r
                for m, r in zip(messages, out, strict=True)]
    grid.send_and_receive = flaky
    run = RunDir.create(tmp_path / "run", cfg)
    summary = run_federated(cfg, run, show_progress=False, runtime=deployed(cfg, grid, min_nodes=3, wait=1))
    rows = {m["round"]: m for m in run.metrics() if "attempts" in m}
    assert rows[1]["attempts"] == 2 and rows[1]["clients"] == 3 and rows[1]["rejected"] == []
    verify_ledger(run.path, public_key=summary["ledger"]["server_public_key"])
