"""Signed update commitments: accepted once, from their signer, in the round and attempt they
were signed for; rejected with the right reason otherwise."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from fedmeta.errors import FedmetaError
from fedmeta.ledger import (
    RejectReason,
    SignatureRefused,
    SignedUpdate,
    UpdateVerifier,
    keys,
    sign_update,
)
from fedmeta.ledger.commitments import update_message

RUN = "run-1"
DATA = b"\x00\x01 update bytes"


@pytest.fixture
def setup():
    alice, bob = keys.generate(), keys.generate()
    registered = {"alice": keys.public_key_hex(alice), "bob": keys.public_key_hex(bob)}
    return alice, bob, UpdateVerifier(registered, RUN)


def rejected(verifier, update, data, round, **where) -> SignatureRefused:
    with pytest.raises(SignatureRefused) as info:
        verifier.check(update, data, round, **where)
    assert isinstance(info.value, FedmetaError)
    return info.value


def test_commitment_is_sha256_of_the_bytes(setup):
    alice, _, verifier = setup
    update = sign_update(alice, RUN, 1, "alice", DATA)
    assert update.commitment == hashlib.sha256(DATA).hexdigest()
    assert verifier.check(update, DATA, 1) is None
    assert SignedUpdate.from_dict(update.to_dict()) == update


def test_unknown_key(setup):
    alice, _, verifier = setup
    err = rejected(verifier, sign_update(alice, RUN, 1, "mallory", DATA), DATA, 1)
    assert err.reason is RejectReason.UNKNOWN_KEY
    assert err.record()["reason"] == "unknown_key" and err.record()["client_id"] == "mallory"


@pytest.mark.parametrize(
    "forge",
    [
        lambda alice, bob: sign_update(bob, RUN, 1, "alice", DATA),  # bob's key, alice's name
        lambda alice, bob: sign_update(alice, "other-run", 1, "alice", DATA),  # other run
        lambda alice, bob: dataclasses.replace(sign_update(alice, RUN, 2, "alice", DATA), round=1),
        lambda alice, bob: dataclasses.replace(
            sign_update(alice, RUN, 1, "alice", DATA), signature="00" * 64
        ),
        lambda alice, bob: dataclasses.replace(
            sign_update(alice, RUN, 1, "alice", DATA), signature="not hex"
        ),
    ],
)
def test_bad_signature(setup, forge):
    alice, bob, verifier = setup
    assert rejected(verifier, forge(alice, bob), DATA, 1).reason is RejectReason.BAD_SIGNATURE


def test_commitment_mismatch(setup):
    alice, _, verifier = setup
    update = sign_update(alice, RUN, 1, "alice", DATA)
    err = rejected(verifier, update, DATA + b"!", 1)
    assert err.reason is RejectReason.COMMITMENT_MISMATCH
    assert f"expected {update.commitment}, got {hashlib.sha256(DATA + b'!').hexdigest()}" in str(
        err
    )


def test_replays(setup):
    alice, bob, verifier = setup
    first = sign_update(alice, RUN, 1, "alice", DATA)
    verifier.check(first, DATA, 1)
    assert rejected(verifier, first, DATA, 1).reason is RejectReason.REPLAY  # same message again
    assert rejected(verifier, first, DATA, 2).reason is RejectReason.REPLAY  # old round's message
    same_bytes = sign_update(alice, RUN, 2, "alice", DATA)  # fresh signature, same commitment
    assert rejected(verifier, same_bytes, DATA, 2).reason is RejectReason.REPLAY
    verifier.check(sign_update(alice, RUN, 2, "alice", b"new"), b"new", 2)
    second = sign_update(alice, RUN, 2, "alice", b"newer")  # a second update in one round
    assert rejected(verifier, second, b"newer", 2).reason is RejectReason.REPLAY
    verifier.check(sign_update(bob, RUN, 2, "bob", DATA), DATA, 2)  # bob may send the same bytes


def test_wrong_round(setup):
    alice, _, verifier = setup
    early = sign_update(alice, RUN, 5, "alice", DATA)
    assert rejected(verifier, early, DATA, 4).reason is RejectReason.WRONG_ROUND


def test_attempt_is_signed(setup):
    """The v2 message binds the attempt of a retried round: changing it breaks the signature."""
    alice, _, verifier = setup
    update = sign_update(alice, RUN, 1, "alice", DATA, attempt=1)
    assert update.attempt == 1 and SignedUpdate.from_dict(update.to_dict()) == update
    assert b"fedmeta/update-commitment/v2\x00" in update_message(RUN, 1, "alice", "00", 1)
    assert update_message(RUN, 1, "alice", "00", 0) != update_message(RUN, 1, "alice", "00", 1)
    moved = dataclasses.replace(update, attempt=0)
    assert rejected(verifier, moved, DATA, 1, attempt=0).reason is RejectReason.BAD_SIGNATURE
    assert verifier.check(update, DATA, 1, attempt=1) is None


def test_retried_round_accepts_each_client_again(setup):
    """An attempt the server abandoned does not count against the next one: each client's
    new update is accepted, even with the same bytes; its old one is a replay, and one
    signed for a later attempt is refused."""
    alice, bob, verifier = setup
    verifier.check(sign_update(alice, RUN, 1, "alice", DATA, attempt=0), DATA, 1, attempt=0)
    old_bob = sign_update(bob, RUN, 1, "bob", b"bob 0", attempt=0)  # never delivered in attempt 0
    verifier.check(sign_update(alice, RUN, 1, "alice", DATA, attempt=1), DATA, 1, attempt=1)
    assert rejected(verifier, old_bob, b"bob 0", 1, attempt=1).reason is RejectReason.REPLAY
    early = sign_update(bob, RUN, 1, "bob", b"bob 2", attempt=2)
    assert rejected(verifier, early, b"bob 2", 1, attempt=1).reason is RejectReason.WRONG_ROUND
    verifier.check(sign_update(bob, RUN, 1, "bob", b"bob 1", attempt=1), b"bob 1", 1, attempt=1)
    again = sign_update(alice, RUN, 1, "alice", b"other", attempt=1)  # second one in attempt 1
    assert rejected(verifier, again, b"other", 1, attempt=1).reason is RejectReason.REPLAY
    # the bytes accepted in round 1 are not accepted again in round 2
    same = sign_update(alice, RUN, 2, "alice", DATA)
    assert rejected(verifier, same, DATA, 2).reason is RejectReason.REPLAY


def test_wrong_sender_is_refused_under_the_sender(setup):
    alice, _, verifier = setup
    update = sign_update(alice, RUN, 1, "alice", DATA)
    err = rejected(verifier, update, DATA, 1, sender="bob")
    assert err.reason is RejectReason.WRONG_SENDER
    assert err.client_id == "bob" and err.claimed == "alice"
    record = err.record()
    assert record["client_id"] == "bob" and record["reason"] == "wrong_sender"
    assert "'bob' (signed as 'alice')" in record["detail"]
    assert verifier.check(update, DATA, 1, sender="alice") is None  # the genuine one still counts
    assert rejected(verifier, update, DATA, 1, sender="alice").reason is RejectReason.REPLAY


@pytest.mark.parametrize(
    "field, value",
    [
        ("round", "1"),
        ("attempt", None),
        ("attempt", True),
        ("client_id", ["alice"]),
        ("signature", 7),
    ],
)
def test_malformed_fields_are_rejected_not_crashing(setup, field, value):
    alice, _, verifier = setup
    update = dataclasses.replace(sign_update(alice, RUN, 1, "alice", DATA), **{field: value})
    assert rejected(verifier, update, DATA, 1, sender="alice").reason is RejectReason.BAD_SIGNATURE


def test_from_dict_without_attempt_means_attempt_zero(setup):
    alice, _, _ = setup
    data = sign_update(alice, RUN, 1, "alice", DATA).to_dict()
    del data["attempt"]
    assert SignedUpdate.from_dict(data).attempt == 0
