"""Restarts in a deployment. A run resumed from the server's checkpoint on a new Flower run
(a restarted superlink: every node's Flower context starts empty) resumes the clients'
top-k residuals from their own disks (`--state-dir`), and so ends with the parameters of
the in-process run resumed at the same round; without it the residuals restart at zero.
A supernode restarted mid-run (a new node id) rejoins as its client."""

from __future__ import annotations

import json
import shlex

import pytest
import torch

from fedmeta.cli import main
from fedmeta.deploy.client_state import KEEP, ClientStateStore
from fedmeta.errors import ConfigError
from fedmeta.federated.driver import run_federated
from fedmeta.ledger import Ledger, verify_ledger
from fedmeta.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")

STOP_AT = 3  # the superlink dies when round 3 is sent: rounds 1-2 are checkpointed


class Killed(Exception):
    """The superlink's process ending mid-run."""


def ledger_entries(run_dir) -> list[dict]:
    with Ledger.open(run_dir) as ledger:
        return [json.loads(body) for _, body, _ in ledger.entries()]


def deployed_run(config_, grid_factory, deployed, tmp_path, state_dir):
    """Rounds 1-2 on one Flower run, a crash, then the rest on a new Flower run with
    fresh node contexts, resumed from the checkpoint; the final parameters."""
    cfg = config_
    node = {"state-dir": str(state_dir)} if state_dir else {}
    first = grid_factory(3, node_config=node)
    send = first.send_and_receive

    def dying(messages, *, timeout=None):
        if any(m.metadata.message_type == "train" and m.metadata.group_id == f"{STOP_AT}.0" for m in messages):
            raise Killed()
        return send(messages, timeout=timeout)

    first.send_and_receive = dying
    run = RunDir.create(tmp_path / "flower", cfg)
    with pytest.raises(Killed):
        run_federated(cfg, run, show_progress=False, runtime=deployed(cfg, first, min_nodes=3, wait=1))
    second = grid_factory(3, node_config=node)  # a new Flower run: empty contexts
    run_federated(cfg, RunDir(run.path), resume=True, show_progress=False,
                  runtime=deployed(cfg, second, min_nodes=3, wait=1))
    return torch.load(run.path / "model.pt", weights_only=True)


def in_process_resumed(cfg, tmp_path):
    """The in-process run, killed at the same round and resumed from its checkpoint."""
    from fedmeta.federated.runtime import Runtime

    runtime = Runtime(cfg)
    exchange = runtime.transport.exchange

    def dying(round_, attempt, sampled, b):
        if round_ == STOP_AT:
            raise Killed()
        return exchange(round_, attempt, sampled, b)

    runtime.transport.exchange = dying
    run = RunDir.create(tmp_path / "local", cfg)
    with pytest.raises(Killed):
        run_federated(cfg, run, show_progress=False, runtime=runtime)
    run_federated(cfg, RunDir(run.path), resume=True, show_progress=False)
    return torch.load(run.path / "model.pt", weights_only=True)


def test_a_resumed_deployment_keeps_the_clients_top_k_residuals(config, grid_factory, deployed, tmp_path):
    cfg = config(rounds=5, compression="topk", topk_fraction=0.1, clients_per_round=3)
    cfg = cfg.model_validate({**cfg.model_dump(exclude_none=True),
                              "ledger": {"enabled": True, "server_key": str(tmp_path / "server.pem")}})
    local = in_process_resumed(cfg, tmp_path)
    kept = deployed_run(cfg, grid_factory, deployed, tmp_path / "kept", tmp_path / "states")
    summary = json.loads((tmp_path / "kept" / "flower" / "summary.json").read_text())
    assert summary["ledger"]["verified"] and summary["rounds"] == 5
    verify_ledger(tmp_path / "kept" / "flower")  # one ledger across the restart, every round once
    rounds = [e for e in ledger_entries(tmp_path / "kept" / "flower") if e["type"] == "round"]
    assert [e["round"] for e in rounds] == [1, 2, 3, 4, 5]
    assert local.keys() == kept.keys() and all(torch.equal(local[k], kept[k]) for k in local)  # bit for bit
    lost = deployed_run(cfg, grid_factory, deployed, tmp_path / "lost", None)
    assert not all(torch.allclose(local[k], lost[k], rtol=0, atol=1e-6) for k in local)  # the test can fail
    runs = list((tmp_path / "states").iterdir())
    assert len(runs) == 1  # one fedmeta run: the resumed part kept its id
    for client in runs[0].iterdir():
        assert 0 < len(list(client.glob("*.pt"))) <= KEEP and not list(client.glob("*.partial"))


def test_the_store_reads_the_latest_state_before_the_round_asked(tmp_path):
    store = ClientStateStore(tmp_path, "ab" * 16, 4)
    assert store.load(1, 0) == {}
    for r in range(1, 6):
        store.save(r, 0, {"compress": {"w": torch.full((2,), float(r))}})
    store.save(3, 1, {"compress": {"w": torch.full((2,), 3.5)}})
    assert float(store.load(4, 0)["compress"]["w"][0]) == 3.5  # round 3's retry came after round 3
    assert float(store.load(6, 0)["compress"]["w"][0]) == 5.0
    assert len(list(store.path.glob("*.pt"))) == KEEP
    with pytest.raises(ConfigError):
        ClientStateStore(tmp_path, "../../etc", 0)  # the key names a folder: only a run id


def test_the_supernode_command_carries_its_state_folder(tmp_path, capsys):
    assert main(["deploy", "supernode", "--superlink", "127.0.0.1:9100", "--partition-id", "0", "--num-partitions", "3",
                 "--insecure", "--state-dir", str(tmp_path), "--print"]) == 0
    node = shlex.split(capsys.readouterr().out)
    assert f'state-dir="{tmp_path}"' in node[node.index("--node-config") + 1]
    assert main(["deploy", "supernode", "--superlink", "127.0.0.1:9100", "--partition-id", "0", "--num-partitions", "3",
                 "--insecure", "--state-dir", str(tmp_path / "absent"), "--print"]) == 2
    assert "--state-dir" in capsys.readouterr().err


def restart(grid, old: int, new: int) -> None:
    """Supernode `old` restarts: it comes back as node `new`, same node config, empty state."""
    from flwr.app import Context, RecordDict

    mine = grid.contexts.pop(old).node_config
    grid.contexts[new] = Context(run_id=1, node_id=new, state=RecordDict(), run_config={}, node_config=mine)


def test_a_restarted_supernode_rejoins_the_run_as_its_client(config, grid_factory, deployed, tmp_path):
    """Between rounds 1 and 2 supernode 101 (client 1) restarts under a new node id: it is
    asked once which client it is and serves client 1 from round 2 on, so the run ends with
    the in-process run's parameters; a newcomer claiming a client whose node is still
    connected is refused and asked again later."""
    cfg = config(rounds=3, clients_per_round=3)
    local = run_federated(cfg, RunDir.create(tmp_path / "local", cfg), show_progress=False)
    grid = grid_factory(3)
    runtime = deployed(cfg, grid, min_nodes=3, wait=1)
    round_ = runtime.run_round
    runtime.run_round = lambda: (restart(grid, 101, 201) if runtime.round == 1 else None, round_())[1]
    run = RunDir.create(tmp_path / "flower", cfg)
    remote = run_federated(cfg, run, show_progress=False, runtime=runtime)
    assert runtime.transport.nodes == {0: 100, 1: 201, 2: 102}
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert {m.metadata.dst_node_id for m in trains if m.metadata.group_id.startswith("1.")} == {100, 101, 102}
    assert {m.metadata.dst_node_id for m in trains if m.metadata.group_id.startswith("2.")} == {100, 201, 102}
    a = torch.load(tmp_path / "local" / "model.pt", weights_only=True)
    b = torch.load(run.path / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a) and remote["final"] == local["final"]
    # a second node claiming client 0 while node 100 is connected: refused, asked again next time
    grid.contexts[300] = type(grid.contexts[100])(run_id=1, node_id=300, state=grid.contexts[100].state,
                                                  run_config={}, node_config=grid.contexts[100].node_config)
    runtime.transport.rejoin()
    assert runtime.transport.nodes[0] == 100 and 300 not in runtime.transport.known
