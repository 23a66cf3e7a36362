"""Each owner's rows stay with the owner: three hospitals' CSV files federated with FedMeta,
client-level DP and SecAgg+ in-process (the CLI and `fedmeta.run`, reading all files) and
over Flower with each supernode reading only its own file, on a server that holds none.
With `noise_seed` both give the same model and the same personalization figures, which the
owners compute on their own rows; the ledger records each owner's schema hash."""

from __future__ import annotations

import csv
import json
import random

import pytest
import torch

import fedmeta
from fedmeta.api import resolve_config
from fedmeta.cli import main
from fedmeta.config import Config, load_config
from fedmeta.data.table import configured_schema, schema_sha256
from fedmeta.deploy.clientapp import client_side
from fedmeta.deploy.transport import FlowerTransport
from fedmeta.errors import ConfigError
from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import Runtime
from fedmeta.ledger import verify_ledger
from fedmeta.ledger.log import LEDGER_FILE
from fedmeta.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")

SCALES = {"alpha": 1000.0, "beta": 0.001, "gamma": 1.0, "delta": 10.0}  # delta is held out


def hospital(folder, name: str, scale: float, rows: int = 30, with_owner_column: bool = True):
    """One hospital's own export: `age` on its own scale, a ward, a dose, an outcome."""
    rng = random.Random(name)
    path = folder / f"{name}.csv"
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow((["hospital"] if with_owner_column else []) + ["age", "ward", "dose", "outcome"])
        for _ in range(rows):
            age, ward, dose = rng.gauss(5, 2), rng.choice(["er", "general", "icu"]), rng.gauss(120, 10)
            outcome = "bad" if (age > 5) != (ward == "icu") else "good"
            out.writerow(([name] if with_owner_column else []) + [age * scale, ward, dose, outcome])
    return path


def raw(paths) -> dict:
    return {
        "run": {"name": "hospitals", "seed": 1},
        "data": {"name": "table", "path": [str(p) for p in paths], "client_column": "hospital",
                 "label_column": "outcome", "held_out": ["delta"]},
        "model": {"name": "mlp", "hidden": [16]},
        "meta": {"algorithm": "fomaml", "inner_lr": 0.1, "eval_inner_steps": 2},
        "federated": {"rounds": 2, "n_clients": 3, "clients_per_round": 3, "eval_every": 1,
                      "partition": {"support_size": 5, "query_size": 5},
                      "clients": {"procedure": "fedmeta", "local_steps": 2, "tasks_per_step": 2}},
        "privacy": {"dp": "central", "noise_multiplier": 0.5, "clip_norm": 1.0, "delta": 1e-5, "noise_seed": 5,
                    "secure_aggregation": "secagg+", "secagg_clip": 2.0},
        "ledger": {"enabled": True},
    }


@pytest.fixture
def owners(tmp_path):
    files = {n: hospital(tmp_path, n, s, with_owner_column=n != "delta") for n, s in SCALES.items()}
    return files


def test_owners_files_deployed_equal_the_in_process_run(owners, tmp_path, monkeypatch, grid_factory):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    # in-process, reading every file: the CLI and fedmeta.run give the same run
    (tmp_path / "pooled").mkdir()
    paths = [owners["alpha"], owners["beta"], owners["gamma"], hospital(tmp_path / "pooled", "delta", SCALES["delta"])]
    (tmp_path / "h.toml").write_text(Config.model_validate(raw(paths)).to_toml())
    assert main(["run", str(tmp_path / "h.toml"), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    result = fedmeta.run(tmp_path / "h.toml", out=tmp_path / "api", progress=False)
    cli = torch.load(tmp_path / "cli" / "model.pt")
    assert all(torch.equal(cli[k], result.params[k]) for k in cli)
    assert result.history == [json.loads(line) for line in (tmp_path / "api" / "metrics.jsonl").read_text().splitlines()]

    # deployed: the server's config is the run's own, without the files (the schema alone)
    written = load_config(tmp_path / "api" / "config.toml")
    server_cfg = written.model_copy(update={"data": written.data.model_copy(update={"path": None})})
    nodes = [{"data-file": str(owners[n])} for n in ("gamma", "alpha", "beta")]  # any order: the schema places them
    nodes.append({"data-file": str(owners["delta"]), "owner": "delta"})  # an export without the client column
    grid = grid_factory(0, nodes=nodes)
    runtime = Runtime(server_cfg, lambda rt: FlowerTransport(rt.cfg, grid, min_nodes=4, wait=1, data=rt.data))
    assert runtime.data.remote and not any(hasattr(c, "x") for c in runtime.data.train)  # no rows on the server
    run = RunDir.create(tmp_path / "flower", server_cfg)
    summary = run_federated(server_cfg, run, show_progress=False, runtime=runtime)
    run.close()

    deployed = torch.load(tmp_path / "flower" / "model.pt")
    assert all(torch.allclose(deployed[k], result.params[k], rtol=0, atol=1e-6) for k in deployed)
    mine = [m for m in RunDir(tmp_path / "flower").metrics() if m["split"] in ("test", "train")]
    theirs = [m for m in result.history if m["split"] in ("test", "train")]
    assert [(m["round"], m["split"], m["eval_clients"]) for m in mine] == [
        (m["round"], m["split"], m["eval_clients"]) for m in theirs]
    for a, b in zip(mine, theirs, strict=True):  # computed by the owners, on their own rows
        for key in ("loss_before", "loss_after", "acc_before", "acc_after"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), (a["round"], a["split"], key)
    assert summary["epsilon"] == result.summary["epsilon"]

    # only the owners' figures reached the server: every evaluate reply holds numbers alone
    replies = [m for m in grid.replies if m.metadata.message_type == "evaluate"]
    assert replies and all(set(m.content) == {"header", "figures"} for m in replies)
    assert all(set(dict(m.content["figures"])) == {"loss_before", "loss_after", "acc_before", "acc_after"}
               for m in replies)

    # the ledger's start entry: each owner's schema hash, all equal to the run's schema
    public = summary["ledger"]["server_public_key"]
    verify_ledger(tmp_path / "flower", public_key=public)
    start = ledger_start(tmp_path / "flower")
    expected = schema_sha256(configured_schema(server_cfg.data))
    assert start["data"]["schema_sha256"] == expected
    assert start["data"]["owners"] == {n: {"schema_sha256": expected, "rows": 30} for n in SCALES}
    in_process = ledger_start(tmp_path / "api")["data"]
    assert in_process["schema_sha256"] == expected and set(in_process["files"]) == {p.name for p in paths}
    assert "membership_audit" not in summary and "stay with their owners" in summary["membership_audit_skipped"]


def ledger_start(folder) -> dict:
    import sqlite3

    with sqlite3.connect(folder / LEDGER_FILE) as db:
        rows = db.execute("SELECT body FROM entries ORDER BY idx").fetchall()
    bodies = [json.loads(r[0]) for r in rows]
    return next(b for b in bodies if b.get("type") == "start")["extra"]


@pytest.mark.parametrize("node, field, text", [
    ({"data-file": "{alpha}", "owner": "beta"}, "owner", "names"),  # the file says another owner
    ({"data-file": "{delta}"}, "data.client_column", "a column of the table"),  # no owner column, no --owner
    ({"data-file": "{delta}", "owner": "zeta"}, "data.clients", "every owner"),  # not in the schema
    ({"data-file": "{odd}"}, "data.columns[1].categories", "'ward': it holds 'surgery'"),  # outside the vocabulary
])
def test_an_owners_file_that_does_not_fit_the_schema_is_refused(owners, tmp_path, node, field, text):
    odd = tmp_path / "odd.csv"
    odd.write_text(owners["alpha"].read_text().replace(",icu,", ",surgery,"))
    files = {**{n: str(p) for n, p in owners.items()}, "odd": str(odd)}
    node = {k: v.format(**files) for k, v in node.items()}
    cfg = Config.model_validate({**raw([owners["alpha"]]), "data": {
        **raw([])["data"], "path": None, "clients": list(SCALES), "labels": ["bad", "good"],
        "columns": [{"name": "age", "kind": "numeric"}, {"name": "ward", "kind": "categorical",
                                                        "categories": ["er", "general", "icu"]},
                    {"name": "dose", "kind": "numeric"}]}})
    with pytest.raises(ConfigError) as err:
        client_side(cfg.to_toml(), node)
    assert err.value.field == field and text in str(err.value), str(err.value)


def test_a_server_without_rows_runs_only_deployed(owners, tmp_path):
    cfg = load_config_from(raw([owners["alpha"]]), path=None, schema=True)
    with pytest.raises(ConfigError) as err:
        Runtime(cfg)
    assert err.value.field == "data.path" and "only a deployed server" in str(err.value)
    with pytest.raises(ConfigError) as err:
        load_config_from(raw([owners["alpha"]]), path=None, schema=False)
    assert err.value.field == "data.path" and "data.clients" in str(err.value)


def load_config_from(base: dict, *, path, schema: bool) -> Config:
    data = {**base["data"], "path": path}
    if schema:
        data.update(clients=list(SCALES), labels=["bad", "good"], columns=[{"name": "age", "kind": "numeric"}])
        data["features"] = ["age"]
    return resolve_config({**base, "data": data})


@pytest.mark.slow  # a superlink and four real supernodes
def test_deploy_local_with_owners_files_runs_real_supernodes_each_on_its_file(owners, tmp_path, monkeypatch):
    """Flower's own processes: a superlink, four supernodes each given one file, the
    ServerApp on the schema alone; the same model and figures as the in-process run."""
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    (tmp_path / "pooled").mkdir()
    paths = [owners["alpha"], owners["beta"], owners["gamma"], hospital(tmp_path / "pooled", "delta", SCALES["delta"])]
    settings = raw(paths)
    settings["federated"]["rounds"] = 1
    settings["privacy"] = {"dp": "central", "noise_multiplier": 0.5, "clip_norm": 1.0, "delta": 1e-5, "noise_seed": 5}
    (tmp_path / "h.toml").write_text(Config.model_validate(settings).to_toml())
    local = fedmeta.run(tmp_path / "h.toml", progress=False)
    hospital(tmp_path, "delta", SCALES["delta"])  # delta's export with the client column (no --owner here)
    files = [str(owners[n]) for n in ("alpha", "beta", "gamma", "delta")]
    argv = ["deploy", "local", str(tmp_path / "h.toml"), "--out", str(tmp_path / "flower2"), "--deadline", "120"]
    assert main([*argv, *(a for f in files for a in ("--data", f))]) == 0
    written = load_config(tmp_path / "flower2" / "config.toml").data
    assert written.path is None and written.clients == sorted(SCALES)  # the server's config: the schema, no rows
    deployed = torch.load(tmp_path / "flower2" / "model.pt")
    assert all(torch.equal(deployed[k], local.params[k]) for k in deployed)
    figures = [m for m in RunDir(tmp_path / "flower2").metrics() if m["split"] == "test"]
    assert [m["acc_after"] for m in figures] == pytest.approx(
        [m["acc_after"] for m in local.history if m["split"] == "test"], abs=1e-6)
