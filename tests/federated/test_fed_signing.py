"""Signed updates in a run: unknown keys, bad signatures, replays and updates presented by
another client than their signer are refused, logged in the ledger under the sender, and left
out of the aggregate; rounds retried after dropouts still accept every honest client."""

import copy
import json
import logging
import sqlite3

import pytest
import torch

from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import Runtime
from fedmeta.ledger import keys, verify_ledger
from fedmeta.ledger.commitments import sign_update
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


def signing_runtime(cfg):
    runtime = Runtime(cfg)
    runtime.enable_signing("run-under-test")
    return runtime


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


def admit(runtime, replies, r):
    """The server's admission and aggregate of `replies` in round r: (Δ, Admitted)."""
    admitted = runtime.server.admission(replies, r, runtime.params)
    return runtime.server.aggregate(admitted, r).delta, admitted


def test_replayed_update_is_refused_and_changes_nothing(config, tmp_path, monkeypatch):
    cfg = signed_config(config, tmp_path, monkeypatch)
    runtime = signing_runtime(cfg)
    first = runtime.exchange(1)
    runtime.server.apply(runtime.server.aggregate(runtime.server.admission(copy.deepcopy(first), 1, runtime.params), 1))
    clean = copy.deepcopy(runtime)
    second = runtime.exchange(2)
    replayed = copy.deepcopy(second)
    replayed.replies[0] = first.replies[0]  # client 0 resends round 1
    honest = copy.deepcopy(second)
    del honest.replies[0]
    got, admitted = admit(runtime, replayed, 2)
    assert admitted.rejected[0].startswith("wrong_round") or admitted.rejected[0].startswith("replay")
    expected, _ = admit(clean, honest, 2)
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
    runtime = signing_runtime(cfg)
    clean = copy.deepcopy(runtime)
    collected = runtime.exchange(1)
    assert {0, 1} <= collected.replies.keys()
    honest = copy.deepcopy(collected)
    del honest.replies[1]
    forged = copy.deepcopy(collected)
    forged.replies = {1: collected.replies[0], **{c: m for c, m in collected.replies.items() if c != 1}}
    with caplog.at_level(logging.WARNING, logger="fedmeta.federated"):
        got, admitted = admit(runtime, forged, 1)
    assert admitted.rejected[1].startswith("wrong_sender") and 0 not in admitted.rejected
    refusal = next(r for r in admitted.refused if r["reason"] == "wrong_sender")
    assert refusal["client_id"] == "1" and "'0'" in refusal["detail"]
    assert any("'1' (signed as '0')" in m for m in caplog.messages)
    expected, _ = admit(clean, honest, 1)
    assert all(torch.equal(got[k], expected[k]) for k in got)


def test_update_signed_for_an_earlier_attempt_is_refused(config, tmp_path, monkeypatch):
    """Round 1's attempt 0 comes up short (only client 0's update arrives); in attempt 1 the
    attempt-0 updates of client 0 (seen) and client 1 (never delivered) are replayed in
    their own slots and refused, while the others' fresh updates are accepted."""
    cfg = signed_config(config, tmp_path, monkeypatch, min_clients=2)
    runtime = signing_runtime(cfg)
    first = runtime.exchange(1, 0)
    short = copy.deepcopy(first)
    short.replies = {0: first.replies[0]}
    admitted = runtime.server.admission(short, 1, runtime.params)
    assert admitted.usable == 1 < 2  # client 0's attempt-0 update was accepted, then the attempt failed
    second = runtime.exchange(1, 1)
    assert {0, 1} <= second.replies.keys() and second.replies[0].data != first.replies[0].data
    replayed = copy.deepcopy(second)
    for c in (0, 1):
        replayed.replies[c] = first.replies[c]
    admitted = runtime.server.admission(replayed, 1, runtime.params)
    assert admitted.rejected[0].startswith("replay") and admitted.rejected[1].startswith("replay")
    assert set(admitted.rejected) == {0, 1, 5, 6, 7}


def test_replay_within_one_attempt_is_refused(config, tmp_path, monkeypatch):
    cfg = signed_config(config, tmp_path, monkeypatch)
    runtime = signing_runtime(cfg)
    collected = runtime.exchange(1)
    runtime.server.admission(copy.deepcopy(collected), 1, runtime.params)
    check = runtime.server.admission.check_signature
    again = check(1, 0, 0, collected.replies[0].data, collected.replies[0].signed)
    assert again is not None and again["reason"] == "replay" and again["client_id"] == "0"
    key = keys.load_private_key(tmp_path / "keys" / "0.pem")
    other = sign_update(key, runtime.run_id, 1, "0", collected.replies[1].data)  # a second update of client 0 in the same attempt
    assert check(1, 0, 0, collected.replies[1].data, other)["reason"] == "replay"
