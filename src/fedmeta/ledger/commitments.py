"""Signed update commitments: a client signs SHA-256 of exactly the bytes it sends.

The signed message is a domain-separation prefix followed by the canonical JSON of
(run id, round, client id, commitment), so a signature cannot be reused for another run,
round, client or payload, nor confused with any other message signed by the same key.
`UpdateVerifier` is the server side: it accepts an update at most once and raises
`RejectedUpdate` with a reason code that the runtime records in the ledger.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from enum import StrEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmeta.errors import BadInput, VerificationError
from fedmeta.ledger.canonical import canonical_json
from fedmeta.ledger.keys import sign, verify_signature

UPDATE_DOMAIN = b"fedmeta/update-commitment/v1\x00"


def commitment(update_bytes: bytes) -> str:
    """Hex SHA-256 of the exact bytes sent."""
    return hashlib.sha256(update_bytes).hexdigest()


def update_message(run_id: str, round: int, client_id: str, commitment_hex: str) -> bytes:
    body = {"client_id": client_id, "commitment": commitment_hex, "round": round, "run_id": run_id}
    return UPDATE_DOMAIN + canonical_json(body)


@dataclass(frozen=True)
class SignedUpdate:
    """What a client sends beside its update bytes."""

    run_id: str
    round: int
    client_id: str
    commitment: str  # hex SHA-256 of the update bytes
    signature: str  # hex Ed25519 signature of `update_message(...)`

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignedUpdate:
        try:
            return cls(**{k: data[k] for k in cls.__dataclass_fields__})
        except (KeyError, TypeError):
            raise BadInput(
                "signed update", data, f"keys {list(cls.__dataclass_fields__)}"
            ) from None


def sign_update(
    client_key: Ed25519PrivateKey, run_id: str, round: int, client_id: str, update_bytes: bytes
) -> SignedUpdate:
    digest = commitment(update_bytes)
    signature = sign(client_key, update_message(run_id, round, client_id, digest))
    return SignedUpdate(run_id, round, client_id, digest, signature.hex())


class RejectReason(StrEnum):
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    COMMITMENT_MISMATCH = "commitment_mismatch"
    WRONG_ROUND = "wrong_round"


class RejectedUpdate(VerificationError):
    """An update the server refuses in `round`; `reason` is a `RejectReason`."""

    def __init__(
        self, reason: RejectReason, update: SignedUpdate, round: int, expected: Any, got: Any
    ):
        self.reason, self.client_id, self.round = reason, update.client_id, round
        super().__init__(
            f"round {round}: update from {update.client_id!r} for round {update.round} "
            f"rejected ({reason})",
            expected,
            got,
        )

    def record(self) -> dict[str, Any]:
        """The JSON-ready form the ledger stores."""
        return {
            "client_id": self.client_id,
            "round": self.round,
            "reason": str(self.reason),
            "detail": str(self),
        }


class UpdateVerifier:
    """Checks signed updates of one run against the registered client keys."""

    def __init__(self, registered: dict[str, str], run_id: str):
        self.registered = dict(registered)
        self.run_id = run_id
        self._signatures: set[str] = set()
        self._commitments: set[tuple[str, str]] = set()  # (client id, commitment)
        self._accepted_in_round: set[tuple[str, int]] = set()  # (client id, round)

    def check(self, update: SignedUpdate, update_bytes: bytes, round: int) -> None:
        """Return None and remember the update if it is acceptable in `round`, else raise."""
        public = self.registered.get(update.client_id)
        if public is None:
            raise RejectedUpdate(
                RejectReason.UNKNOWN_KEY,
                update,
                round,
                f"one of {len(self.registered)} registered clients",
                update.client_id,
            )
        message = update_message(self.run_id, update.round, update.client_id, update.commitment)
        try:
            verify_signature(public, message, bytes.fromhex(update.signature), "update signature")
        except (VerificationError, ValueError):
            raise RejectedUpdate(
                RejectReason.BAD_SIGNATURE,
                update,
                round,
                f"a signature by {public}",
                update.signature,
            ) from None
        got = commitment(update_bytes)
        if got != update.commitment:
            raise RejectedUpdate(
                RejectReason.COMMITMENT_MISMATCH, update, round, update.commitment, got
            )
        if update.round > round:
            raise RejectedUpdate(
                RejectReason.WRONG_ROUND, update, round, f"round {round}", update.round
            )
        if update.round < round:
            raise RejectedUpdate(RejectReason.REPLAY, update, round, f"round {round}", update.round)
        if update.signature in self._signatures or (update.client_id, got) in self._commitments:
            raise RejectedUpdate(
                RejectReason.REPLAY, update, round, "an update not accepted before", got
            )
        if (update.client_id, round) in self._accepted_in_round:
            raise RejectedUpdate(
                RejectReason.REPLAY,
                update,
                round,
                f"one update per client in round {round}",
                "a second one",
            )
        self._signatures.add(update.signature)
        self._commitments.add((update.client_id, got))
        self._accepted_in_round.add((update.client_id, round))
