"""Deployment fails safe: a supernode that dies mid-run is a dropped client (the superlink
answers for it; the round completes with the survivors or is retried, as in-process), and
a ServerApp failure reaches the launcher's caller as the error it is."""

import json

import pytest
from flwr.app import Error, Message

from fedmeta.deploy.launch import read_failure, write_failure
from fedmeta.deploy.messages import TRAIN
from fedmeta.errors import BadInput, ConfigError, FedmetaError
from fedmeta.federated.driver import run_federated
from fedmeta.rundir import RunDir

SUPERLINK_NODE_ID = 1  # flwr.common.constant: the sender of the superlink's own error replies
NODE_UNAVAILABLE = 5


@pytest.fixture
def dying_grid(grid_factory):
    """A LoopbackGrid that numbers messages as Flower's grid does; from round `dies_after` + 1
    on, the supernodes in `dead` are gone: the superlink answers their messages itself
    (sender: the superlink, not the node), as flwr 1.42 does once a node misses its heartbeats."""

    class DyingGrid(grid_factory):
        def __init__(self, n, dead, dies_after):
            super().__init__(n)
            self.dead, self.dies_after = {100 + i for i in dead}, dies_after

        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            for m in messages:
                m.metadata.__dict__["_message_id"] = m.object_id
            gone = [m for m in messages if m.metadata.dst_node_id in self.dead and m.metadata.message_type == TRAIN
                    and int(m.content["header"]["round"]) > self.dies_after]
            out = super().send_and_receive([m for m in messages if m not in gone], timeout=timeout)
            for m in gone:
                self.sent.append(m)
                reply = Message(Error(code=NODE_UNAVAILABLE, reason="node unavailable"), reply_to=m)
                reply.metadata.__dict__["_src_node_id"] = SUPERLINK_NODE_ID
                out.append(reply)
            return out

    return DyingGrid


def test_a_dead_supernode_is_a_dropped_client(config, dying_grid, deployed, tmp_path):
    cfg = config(rounds=4, n_clients=3, clients_per_round=2, min_clients=1)
    grid = dying_grid(3, dead={1}, dies_after=1)
    run = RunDir.create(tmp_path / "run", cfg)
    summary = run_federated(cfg, run, show_progress=False, runtime=deployed(cfg, grid, min_nodes=3, wait=1))
    assert summary["rounds"] == 4
    asked = [int(m.content["header"]["round"]) for m in grid.sent if m.metadata.message_type == TRAIN
             and m.metadata.dst_node_id == 101 and int(m.content["header"]["round"]) > 1]
    assert asked  # client 1 was sampled after its node died, and the run went on without it
    rounds = {m["round"]: m for m in RunDir(run.path).metrics() if m["split"] == "test"}
    assert all(rounds[r]["dropped"] >= 1 for r in asked)


def test_too_few_survivors_is_the_in_process_error(config, dying_grid, deployed, tmp_path):
    cfg = config(rounds=3, n_clients=3, clients_per_round=3, min_clients=3, max_retries=1)
    runtime = deployed(cfg, dying_grid(3, dead={0}, dies_after=1), min_nodes=3, wait=1)
    with pytest.raises(FedmetaError, match="round 2: only 2 of 3 sampled clients"):
        run_federated(cfg, RunDir.create(tmp_path / "run", cfg), show_progress=False, runtime=runtime)


def test_a_reply_from_no_client_asked_is_ignored(config, grid_factory, deployed):
    grid = grid_factory(3)
    runtime = deployed(config(), grid, min_nodes=3, wait=1)
    receive = grid.send_and_receive

    def with_stray(messages, **kwargs):
        out = receive(messages, **kwargs)
        stray = Message(Error(code=NODE_UNAVAILABLE, reason="?"), reply_to=messages[0])
        stray.metadata.__dict__["_src_node_id"] = 999
        stray.metadata.__dict__["_reply_to_message_id"] = "unknown"
        return [stray, *out]

    grid.send_and_receive = with_stray
    assert runtime.run_round().row["clients"] == 2


@pytest.mark.parametrize(("err", "kind", "line"), [
    (ConfigError("federated.min_clients", 5, "at most clients_per_round"), BadInput,
     "federated.min_clients = 5: at most clients_per_round"),
    (FedmetaError("round 2: only 1 of 2 sampled clients returned usable updates"), FedmetaError,
     "the ServerApp failed: FedmetaError: round 2: only 1 of 2 sampled clients returned usable updates"),
    (KeyError(7), FedmetaError, "the ServerApp failed: KeyError: 7"),
])
def test_the_server_apps_failure_is_reported_as_itself(tmp_path, err, kind, line):
    write_failure(tmp_path / "error.json", err)
    assert json.loads((tmp_path / "error.json").read_text())["error"] == type(err).__name__
    got = read_failure(tmp_path / "error.json", tmp_path / "logs")
    assert type(got) is kind and str(got).startswith(line)
    assert read_failure(tmp_path / "missing.json", tmp_path) is None


@pytest.mark.parametrize(("run_config", "kind", "line"), [
    ({"deadline": -1.0}, BadInput, "deadline = -1.0: a positive, finite number of seconds"),
    ({"min-nodes": 3, "wait": 0.2}, FedmetaError, "the ServerApp failed: FedmetaError: 0 of 3 supernodes connected"),
])
def test_the_server_app_writes_its_failure_for_the_launcher(config, grid_factory, tmp_path, run_config, kind, line):
    from flwr.app import Context, RecordDict

    from fedmeta.deploy.serverapp import server_main

    (tmp_path / "cfg.toml").write_text(config().to_toml())
    rc = {"config": str(tmp_path / "cfg.toml"), "out": str(tmp_path / "run"), "error-file": str(tmp_path / "error.json"),
          **run_config}
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc)
    with pytest.raises(Exception):  # noqa: B017  (Flower logs it and exits 201)
        server_main(grid_factory(0), context)
    got = read_failure(tmp_path / "error.json", tmp_path / "logs")
    assert type(got) is kind and str(got).startswith(line)
