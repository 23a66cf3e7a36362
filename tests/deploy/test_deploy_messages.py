"""The ServerApp/ClientApp message handlers, called directly with Flower `Message`s: the
deployment runtime reproduces the in-process run, its aggregate is the weighted mean of the
clients' decoded updates, signatures travel with the updates, and unsupported options are
one-line config errors."""

import json

import pytest
import torch

from fedmeta.deploy.messages import check_deployable, read_reply
from fedmeta.errors import ConfigError, FedmetaError
from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import Runtime
from fedmeta.federated.wire import decode
from fedmeta.ledger import keys, verify_ledger
from fedmeta.rundir import RunDir

EXAMPLE_DP = {"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5, "clip_norm": 1.0,
              "delta": 1e-5, "noise_seed": 7}


@pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")
@pytest.mark.parametrize("compression", ["none", "topk"])
def test_example_dp_run_equals_the_in_process_run(config, grid_factory, deployed, tmp_path, compression):
    """Seeded example-level DP: each client's work depends only on (round, client), so both
    runtimes must end with the same parameters, metrics and ε; top-k's residual must carry
    over between a client's rounds in its Flower context as it does in-process."""
    cfg = config(privacy=EXAMPLE_DP, rounds=3, compression=compression, topk_fraction=0.3)
    local = run_federated(cfg, RunDir.create(tmp_path / "local", cfg), show_progress=False)
    grid = grid_factory(3)
    runtime = deployed(cfg, grid, min_nodes=3, wait=1)
    run = RunDir.create(tmp_path / "flower", cfg)
    remote = run_federated(cfg, run, show_progress=False, runtime=runtime)
    a, b = torch.load(tmp_path / "local" / "model.pt"), torch.load(run.path / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = Runtime(cfg).params
    assert not all(torch.equal(a[k], start[k]) for k in a)  # the rounds did move the model
    assert remote["epsilon"] == local["epsilon"] > 0
    assert remote["final"] == local["final"]
    assert [m["epsilon"] for m in RunDir(run.path).metrics()] == [m["epsilon"] for m in RunDir(tmp_path / "local").metrics()]
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(trains) == cfg.federated.rounds * cfg.federated.clients_per_round  # one message per client per round


def test_aggregate_is_the_weighted_mean_of_the_replies(config, grid_factory, deployed):
    cfg = config("sinusoid", n_clients=4, clients_per_round=3, strategy="fedavg", server_lr=1.0)
    grid = grid_factory(4)
    runtime = deployed(cfg, grid, min_nodes=4, wait=1)
    before = {k: v.clone() for k, v in runtime.params.items()}
    runtime.run_round()
    replies = [read_reply(m.content) for m in grid.replies if m.metadata.message_type == "train"]
    server = runtime.server
    assert sorted(c for c, _ in replies) == server.sampler.sample(server.generator(1, 0))
    total = sum(r.weight for _, r in replies)
    for name, value in runtime.params.items():
        mean = sum(decode(r.data)[name].double() * r.weight for _, r in replies) / total  # plaintext reference
        torch.testing.assert_close(value.double() - before[name].double(), mean, rtol=1e-5, atol=1e-6)


def test_client_work_differs_between_clients(config, grid_factory, deployed):
    cfg = config("sinusoid", n_clients=2, clients_per_round=2)
    grid = grid_factory(2)
    deployed(cfg, grid, min_nodes=2, wait=1).run_round()
    a, b = (decode(read_reply(m.content)[1].data) for m in grid.replies[-2:])
    assert not all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("secure", ["off", "secagg+"])
def test_signed_updates_verify_in_the_ledger(config, grid_factory, deployed, client_keys, tmp_path, monkeypatch, secure):
    """Each client signs with its own key (node_config `key`); the server holds only the
    registered public keys; a client whose key is not registered is refused and logged (with
    secure aggregation: its masked input is signed, and refused before unmasking)."""
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    registered = client_keys(tmp_path, 3)
    registered["2"] = keys.public_key_hex(keys.generate())  # client 2 signs with a key the server does not know
    cfg = config("sinusoid", clients_per_round=3, privacy={"secure_aggregation": secure})
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"enabled": True, "participants": registered})})
    grid = grid_factory(3)
    for i, ctx in enumerate(grid.contexts.values()):
        ctx.node_config["key"] = str(tmp_path / f"{i}.pem")
    run = RunDir.create(tmp_path / "run", cfg)
    summary = run_federated(cfg, run, show_progress=False, runtime=deployed(cfg, grid, min_nodes=3, wait=1))
    assert summary["rounds"] == 2
    rows = [m for m in run.metrics() if m.get("split") == "test" and m["round"] > 0]
    assert all(r["clients"] == 2 and r["rejected"][0]["client"] == 2 for r in rows)
    assert "bad_signature" in rows[0]["rejected"][0]["reason"]
    verify_ledger(run.path, public_key=summary["ledger"]["server_public_key"])


def test_a_client_missing_from_the_federation_is_dropped(config, grid_factory, deployed, exchange):
    cfg = config("sinusoid", n_clients=3, clients_per_round=3, min_clients=2)
    runtime = deployed(cfg, grid_factory(3), min_nodes=2, wait=1)
    del runtime.transport.nodes[1]
    replies = exchange(runtime, 1)
    assert sorted(replies.replies) == [0, 2] and replies.dropped == {1: "no supernode holds this client"}


@pytest.mark.parametrize(("field", "value"), [
    ("federated.attack.name", "sign_flip"),
    ("federated.clients.dropout_rate", 0.1), ("federated.clients.straggler_rate", 0.1)])
def test_unsupported_options_are_config_errors(config, field, value):
    *path, key = field.split(".")

    def updated(node, path):
        """A copy of `node` with `key` = `value` in the section `path` below it."""
        if not path:
            return node.model_copy(update={key: value})
        return node.model_copy(update={path[0]: updated(getattr(node, path[0]), path[1:])})

    with pytest.raises(ConfigError) as err:
        check_deployable(updated(config("sinusoid"), path))
    assert err.value.field == field


def test_a_wrong_partition_count_is_refused_at_registration(config, grid_factory, deployed):
    cfg = config("sinusoid", n_clients=3)
    grid = grid_factory(3, {"num-partitions": 5})
    with pytest.raises(FedmetaError, match=r"no supernode joined the run \(3 asked\): supernode 100: ConfigError: "
                                           r"node_config = 'partition-id=0 num-partitions=5'"):
        deployed(cfg, grid, min_nodes=3, wait=1)  # stops at once, with the clients' reason
    assert len(grid.replies) == 3 and all("num-partitions" in r.error.reason for r in grid.replies)


def test_server_app_entry_writes_a_complete_run_folder(config, grid_factory, tmp_path):
    from flwr.app import Context, RecordDict

    from fedmeta.deploy.serverapp import server_main

    cfg = config("sinusoid", rounds=1)
    (tmp_path / "cfg.toml").write_text(cfg.to_toml())
    rc = {"config": str(tmp_path / "cfg.toml"), "out": str(tmp_path / "run"), "min-nodes": 3, "wait": 1.0,
          "deadline": 10.0, "resume": False}
    server_main(grid_factory(3), Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=rc))
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["rounds"] == 1 and (tmp_path / "run" / "report.html").is_file()
    assert [m["round"] for m in RunDir(tmp_path / "run").metrics() if m["split"] == "test"] == [0, 1]


def test_clients_clip_with_the_servers_adapted_clip_norm(config, grid_factory, deployed):
    """Adaptive clipping: every update is longer than the tiny initial C, so all come back
    with norm exactly C; the server then raises C, and round 2's updates must have the new C."""
    privacy = {"dp": "central", "noise_multiplier": 0.0, "clip_norm": 1e-4, "clipping": "adaptive",
               "clip_learning_rate": 0.5}
    cfg = config("sinusoid", n_clients=3, clients_per_round=3, privacy=privacy)
    grid = grid_factory(3)
    runtime = deployed(cfg, grid, min_nodes=3, wait=1)
    clips = []
    for _ in range(2):
        clips.append(runtime.server.clip_norm)
        runtime.run_round()
    assert clips[1] > clips[0] * 1.1
    trains = [read_reply(m.content) for m in grid.replies if m.metadata.message_type == "train"]  # 3 per round
    for r, clip in zip((1, 2), clips, strict=True):
        norms = [torch.cat([t.reshape(-1) for t in decode(rep[1].data).values()]).norm().item() for rep in trains[3 * (r - 1) : 3 * r]]
        assert norms == pytest.approx([clip] * 3, rel=1e-4)


def test_a_client_refuses_a_config_other_than_its_pinned_copy(config, grid_factory, deployed, tmp_path):
    cfg = config("sinusoid", n_clients=2, clients_per_round=2)
    (tmp_path / "mine.toml").write_text(cfg.to_toml())
    changed = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"dp": "central", "noise_multiplier": 0.1})})
    grid = grid_factory(2, {"config": str(tmp_path / "mine.toml")})
    assert deployed(cfg, grid, min_nodes=2, wait=1).transport.nodes == {0: 100, 1: 101}
    with pytest.raises(FedmetaError, match="no supernode joined the run .*pinned its own copy"):
        deployed(changed, grid, min_nodes=2, wait=1)
    assert "pinned" in grid.replies[-1].error.reason


def test_the_parameters_travel_as_one_array_and_come_back_exactly():
    """One array for the model (Flower moves each object of a message with its own HTTP
    request): the client reads back the server's tensors bit for bit, names and shapes
    included; an array that does not fit its layout is refused; mixed dtypes keep one
    array per tensor."""
    from flwr.app import ArrayRecord, ConfigRecord, RecordDict
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

    from fedmeta.deploy.messages import HEADER, LAYOUT, PARAMS, params_records, read_params

    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Flatten(), torch.nn.Linear(4, 5))
    params = {k: torch.randn_like(v) for k, v in net.named_parameters()}
    layout, record = params_records(params)
    content = RecordDict({HEADER: ConfigRecord(layout), PARAMS: record})
    got = read_params(content)
    assert list(got) == list(params) and all(torch.equal(got[k], params[k]) for k in params)
    per_tensor = RecordDict({HEADER: ConfigRecord({}), PARAMS: ArrayRecord(torch_state_dict=params)})
    assert len(get_all_nested_objects(content)) < len(get_all_nested_objects(per_tensor)) - 2 * (len(params) - 2)
    short = RecordDict({HEADER: ConfigRecord(layout), PARAMS: ArrayRecord(torch_state_dict={"values": torch.zeros(3)})})
    with pytest.raises(ConfigError, match="does not match its layout"):
        read_params(short)
    mixed = {"w": torch.zeros(2), "steps": torch.zeros(2, dtype=torch.int64)}
    layout, record = params_records(mixed)
    assert LAYOUT not in layout
    back = read_params(RecordDict({HEADER: ConfigRecord(layout), PARAMS: record}))
    assert back["steps"].dtype == torch.int64 and torch.equal(back["w"], mixed["w"])
