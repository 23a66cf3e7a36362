"""Signed updates in a run: unknown keys, bad signatures, replays and updates presented by
another client than their signer are refused, logged in the ledger under the sender, and left
out of the aggregate; rounds retried after dropouts still accept every honest client."""

import copy
import json
import logging
import sqlite3

import pytest
import torch

from fedmeta.federated.simulation import NotEnoughClients, Simulation, run_federated
from fedmeta.ledger import keys, verify_ledger
from fedmeta.rundir import RunDir


def signed_config(config, tmp_path, monkeypatch, honest=6, **federated):
    """Clients 0..honest-1 get keys (default: 0..5; 6 and 7 none); with the default, 5 signs
    with a key the server does not know it by."""
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    folder = tmp_path / "keys"
    folder.mkdir()
    registered = {}
    for cid in range(honest):
        key = keys.generate()
        keys.save_private_key(key, folder / f"{cid}.pem")
        registered[str(cid)] = keys.public_key_hex(key)
    if honest == 6:
        registered["5"] = keys.public_key_hex(keys.generate())
    cfg = config("sinusoid", **{"rounds": 2, "n_clients": 8, "clients_per_round": 8, "held_out_clients": 2, **federated})
    return cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={
        "enabled": True, "client_keys": str(folder), "participants": registered})})


def signing_simulation(cfg):
    sim = Simulation(cfg)
    sim.enable_signing("run-under-test", cfg.ledger.client_keys, cfg.ledger.participants)
    return sim


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
    sim = signing_simulation(cfg)
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


RETRIED = {"dropout_rate": 0.3, "min_clients": 3, "max_retries": 3}  # round 1 needs more than one attempt


@pytest.mark.parametrize("honest", [6, 8])
def test_signed_run_survives_retried_rounds(config, tmp_path, monkeypatch, honest):
    """A round retried after dropouts accepts every honest client again (their new updates
    are signed for the new attempt); with every client registered, the run ends where the
    unsigned run does."""
    cfg = signed_config(config, tmp_path, monkeypatch, honest=honest, **RETRIED)
    run = RunDir.create(tmp_path / "run", cfg)
    summary = run_federated(cfg, run, show_progress=False)
    assert summary["rounds"] == 2
    rounds = {m["round"]: m for m in run.metrics() if "attempts" in m}
    assert rounds[1]["attempts"] > 1  # the retry really happened
    assert not any(r["reason"].startswith("replay") for m in rounds.values() for r in m["rejected"])
    verify_ledger(run.path, public_key=summary["ledger"]["server_public_key"])
    if honest == 8:
        plain = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"client_keys": None, "participants": {}})})
        run_federated(plain, RunDir.create(tmp_path / "plain", plain), show_progress=False)
        a, b = torch.load(run.path / "model.pt"), torch.load(tmp_path / "plain" / "model.pt")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_update_presented_by_another_client_is_refused_under_the_sender(config, tmp_path, monkeypatch, caplog):
    """Client 1 presents client 0's signed update as its own (in its own slot, ahead of the
    genuine one): refused as wrong_sender and logged under 1; 0's update is still accepted."""
    cfg = signed_config(config, tmp_path, monkeypatch)
    sim = signing_simulation(cfg)
    clean = copy.deepcopy(sim)
    collected = sim.collect(1)
    assert {0, 1} <= collected.messages.keys()
    honest = copy.deepcopy(collected)
    del honest.messages[1], honest.signed[1]
    forged = copy.deepcopy(collected)
    forged.messages = {1: collected.messages[0], **{c: m for c, m in collected.messages.items() if c != 1}}
    forged.signed = {1: collected.signed[0], **{c: s for c, s in collected.signed.items() if c != 1}}
    with caplog.at_level(logging.WARNING, logger="fedmeta.federated"):
        got, rejected = sim.aggregate(forged)
    assert rejected[1].startswith("wrong_sender") and 0 not in rejected
    refusal = next(r for r in sim.refused if r["reason"] == "wrong_sender")
    assert refusal["client_id"] == "1" and "'0'" in refusal["detail"]
    assert any("'1' (signed as '0')" in m for m in caplog.messages)
    expected, _ = clean.aggregate(honest)
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_update_signed_for_an_earlier_attempt_is_refused(config, tmp_path, monkeypatch):
    """Round 1's attempt 0 comes up short (only client 0's update arrives); in attempt 1 the
    attempt-0 updates of client 0 (seen) and client 1 (never delivered) are replayed in
    their own slots and refused, while the others' fresh updates are accepted."""
    cfg = signed_config(config, tmp_path, monkeypatch, min_clients=2)
    sim = signing_simulation(cfg)
    first = sim.collect(1, 0)
    short = copy.deepcopy(first)
    short.messages = {0: first.messages[0]}
    with pytest.raises(NotEnoughClients):
        sim.aggregate(short)  # client 0's attempt-0 update was accepted, then the attempt failed
    second = sim.collect(1, 1)
    assert {0, 1} <= second.messages.keys() and second.messages[0] != first.messages[0]
    replayed = copy.deepcopy(second)
    for c in (0, 1):
        replayed.messages[c], replayed.signed[c] = first.messages[c], first.signed[c]
    _, rejected = sim.aggregate(replayed)
    assert rejected[0].startswith("replay") and rejected[1].startswith("replay")
    assert set(rejected) == {0, 1, 5, 6, 7}


def test_replay_within_one_attempt_is_refused(config, tmp_path, monkeypatch):
    cfg = signed_config(config, tmp_path, monkeypatch)
    sim = signing_simulation(cfg)
    collected = sim.collect(1)
    sim.aggregate(copy.deepcopy(collected))
    again = sim.check_signature(0, collected.messages[0], collected.signed[0])
    assert again is not None and again["reason"] == "replay" and again["client_id"] == "0"
    other = sim.sign(0, 1, collected.messages[1])  # a second update of client 0 in the same attempt
    assert sim.check_signature(0, collected.messages[1], other)["reason"] == "replay"
