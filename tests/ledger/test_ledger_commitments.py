"""Signed update commitments: accepted once, rejected with the right reason otherwise."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from fedmeta.errors import FedmetaError
from fedmeta.ledger import (
    RejectedUpdate,
    RejectReason,
    SignedUpdate,
    UpdateVerifier,
    keys,
    sign_update,
)

RUN = "run-1"
DATA = b"\x00\x01 update bytes"


@pytest.fixture
def setup():
    alice, bob = keys.generate(), keys.generate()
    registered = {"alice": keys.public_key_hex(alice), "bob": keys.public_key_hex(bob)}
    return alice, bob, UpdateVerifier(registered, RUN)


def rejected(verifier, update, data, round) -> RejectedUpdate:
    with pytest.raises(RejectedUpdate) as info:
        verifier.check(update, data, round)
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
