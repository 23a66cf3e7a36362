"""Signed updates in a run: unknown keys, bad signatures and replays are refused, logged in
the ledger, and left out of the aggregate."""

import copy
import json
import sqlite3

import torch

from fedmeta.federated.record import RunRecord
from fedmeta.federated.simulation import Simulation, run_federated
from fedmeta.ledger import keys, verify_ledger
from fedmeta.rundir import RunDir


def signed_config(config, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    folder = tmp_path / "keys"
    folder.mkdir()
    registered = {}
    for cid in range(6):  # clients 0..5 get keys; 6 and 7 none
        key = keys.generate()
        keys.save_private_key(key, folder / f"{cid}.pem")
        registered[str(cid)] = keys.public_key_hex(key)
    registered["5"] = keys.public_key_hex(keys.generate())  # 5 signs with a key the server does not know it by
    cfg = config("sinusoid", rounds=2, n_clients=8, clients_per_round=8, held_out_clients=2)
    return cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={
        "enabled": True, "client_keys": str(folder), "participants": registered})})


def entries(run):
    with sqlite3.connect(run / "ledger.db") as db:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY idx")]


def test_unknown_and_forged_updates_are_refused_and_logged(config, tmp_path, monkeypatch):
    cfg = signed_config(config, tmp_path, monkeypatch)
    run = RunDir.create(tmp_path / "run", cfg)
    summary = run_federated(cfg, run, show_progress=False)
    log = entries(run.path)
    refused = [(e["round"], e["client_id"], e["reason"]) for e in log if e["type"] == "rejection"]
    for r in (1, 2):
        assert (r, "5", "bad_signature") in refused
        assert (r, "6", "unknown_key") in refused and (r, "7", "unknown_key") in refused
    rounds = [e for e in log if e["type"] == "round"]
    assert all(set(e["clients"]) == {"0", "1", "2", "3", "4"} for e in rounds)
    verify_ledger(run.path, public_key=summary["ledger"]["server_public_key"])


def test_replayed_update_is_refused_and_changes_nothing(config, tmp_path, monkeypatch):
    cfg = signed_config(config, tmp_path, monkeypatch)
    run = RunDir.create(tmp_path / "run", cfg)
    sim = Simulation(cfg)
    record = RunRecord(cfg, run.path, sim.params, resume=False)
    sim.enable_signing(record.run_id, cfg.ledger.client_keys, cfg.ledger.participants)
    first = sim.collect(1)
    sim.aggregate(copy.deepcopy(first))
    sim.round = 1
    clean = copy.deepcopy(sim)
    second = sim.collect(2)
    replayed = copy.deepcopy(second)
    replayed.messages[0], replayed.signed[0] = first.messages[0], first.signed[0]  # client 0 resends round 1
    honest = copy.deepcopy(second)
    del honest.messages[0], honest.signed[0]
    got, rejected = sim.aggregate(replayed)
    assert rejected[0].startswith("wrong_round") or rejected[0].startswith("replay")
    expected, _ = clean.aggregate(honest)
    assert all(torch.equal(got[k], expected[k]) for k in got)
