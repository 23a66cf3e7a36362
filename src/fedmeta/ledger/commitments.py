"""Signed update commitments: a client signs SHA-256 of exactly the bytes it sends.

The signed message is a domain-separation prefix followed by the canonical JSON of
(run id, round, attempt, client id, commitment), so a signature cannot be reused for another
run, round, attempt of a retried round, client or payload, nor confused with any other
message signed by the same key. `UpdateVerifier` is the server side: it accepts an update at
most once, only from the client that signed it (the transport's sender), only in the round
and attempt it was signed for, and raises `SignatureRefused` with a reason code that the
runtime records in the ledger under the sender.
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

UPDATE_DOMAIN = b"fedmeta/update-commitment/v2\x00"  # v2: the attempt is signed too


def commitment(update_bytes: bytes) -> str:
    """Hex SHA-256 of the exact bytes sent."""
    return hashlib.sha256(update_bytes).hexdigest()


def update_message(
    run_id: str, round: int, client_id: str, commitment_hex: str, attempt: int = 0
) -> bytes:
    """What a client signs: `attempt` numbers the tries of a round retried after dropouts."""
    body = {
        "attempt": attempt,
        "client_id": client_id,
        "commitment": commitment_hex,
        "round": round,
        "run_id": run_id,
    }
    return UPDATE_DOMAIN + canonical_json(body)


@dataclass(frozen=True)
class SignedUpdate:
    """What a client sends beside its update bytes."""

    run_id: str
    round: int
    client_id: str
    commitment: str  # hex SHA-256 of the update bytes
    signature: str  # hex Ed25519 signature of `update_message(...)`
    attempt: int = 0  # which try of the round (0 unless the round was retried)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SignedUpdate:
        fields = cls.__dataclass_fields__
        try:
            update = cls(**{k: data[k] for k in fields if k in data or k != "attempt"})
        except (KeyError, TypeError):
            raise BadInput("signed update", data, f"keys {list(fields)}") from None
        return update  # field types are the verifier's to check: a bad one is a rejection


def sign_update(
    client_key: Ed25519PrivateKey,
    run_id: str,
    round: int,
    client_id: str,
    update_bytes: bytes,
    attempt: int = 0,
) -> SignedUpdate:
    """`client_id`'s signature of `update_bytes` for (run, round, attempt)."""
    digest = commitment(update_bytes)
    signature = sign(client_key, update_message(run_id, round, client_id, digest, attempt))
    return SignedUpdate(run_id, round, client_id, digest, signature.hex(), attempt)


class RejectReason(StrEnum):
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    REPLAY = "replay"
    COMMITMENT_MISMATCH = "commitment_mismatch"
    WRONG_ROUND = "wrong_round"
    WRONG_SENDER = "wrong_sender"


class SignatureRefused(VerificationError):
    """An update the server refuses in `round`; `reason` is a `RejectReason`. `client_id`
    is who sent it (the transport's sender when the server knows it), `claimed` the client
    id inside the signed update; the message names both when they differ."""

    def __init__(
        self,
        reason: RejectReason,
        update: SignedUpdate,
        round: int,
        expected: Any,
        got: Any,
        sender: str | None = None,
    ):
        self.reason, self.round = reason, round
        self.claimed = update.client_id
        self.client_id = self.claimed if sender is None else sender
        who = repr(self.client_id)
        if self.client_id != self.claimed:
            who += f" (signed as {self.claimed!r})"
        when = f"round {update.round}"
        if update.attempt != 0:
            when += f" attempt {update.attempt}"
        super().__init__(
            f"round {round}: update from {who} for {when} rejected ({reason})", expected, got
        )

    def record(self) -> dict[str, Any]:
        """The JSON-ready form the ledger stores: the sender's id, the claim in `detail`."""
        return {
            "client_id": str(self.client_id),
            "round": self.round,
            "reason": str(self.reason),
            "detail": str(self),
        }


def _well_formed(update: SignedUpdate) -> bool:
    texts = (update.run_id, update.client_id, update.commitment, update.signature)
    return all(isinstance(t, str) for t in texts) and all(
        type(n) is int for n in (update.round, update.attempt)
    )


class UpdateVerifier:
    """Checks signed updates of one run against the registered client keys.

    Replay protection is keyed on (client, round, attempt): a client has at most one update
    accepted per attempt of a round, a signature for another round or attempt is refused,
    and an update's bytes are accepted once, except that an attempt the server abandoned
    (too few usable updates, the round was retried) does not count against the next one.
    """

    def __init__(self, registered: dict[str, str], run_id: str):
        self.registered = dict(registered)
        self.run_id = run_id
        self._signatures: set[str] = set()
        # (client id, commitment) -> (round, attempt) it was accepted in
        self._commitments: dict[tuple[str, str], tuple[int, int]] = {}
        self._accepted: set[tuple[str, int, int]] = set()  # (client id, round, attempt)

    def check(
        self,
        update: SignedUpdate,
        update_bytes: bytes,
        round: int,
        attempt: int = 0,
        sender: str | None = None,
    ) -> None:
        """Return None and remember the update if it is acceptable in `round`'s `attempt`,
        else raise. `sender`: the client the transport delivered it from (None: unknown);
        an update signed by anyone else is refused as `wrong_sender`."""

        def refuse(reason: RejectReason, expected: Any, got: Any) -> SignatureRefused:
            return SignatureRefused(reason, update, round, expected, got, sender)

        if not _well_formed(update):
            raise refuse(
                RejectReason.BAD_SIGNATURE,
                "string ids and hex, an integer round and attempt",
                {k: type(v).__name__ for k, v in update.to_dict().items()},
            )
        if sender is not None and sender != update.client_id:
            raise refuse(
                RejectReason.WRONG_SENDER, f"an update signed by {sender!r}", update.client_id
            )
        public = self.registered.get(update.client_id)
        if public is None:
            raise refuse(
                RejectReason.UNKNOWN_KEY,
                f"one of {len(self.registered)} registered clients",
                update.client_id,
            )
        message = update_message(
            self.run_id, update.round, update.client_id, update.commitment, update.attempt
        )
        try:
            verify_signature(public, message, bytes.fromhex(update.signature), "update signature")
        except (VerificationError, ValueError):
            raise refuse(
                RejectReason.BAD_SIGNATURE, f"a signature by {public}", update.signature
            ) from None
        got = commitment(update_bytes)
        if got != update.commitment:
            raise refuse(RejectReason.COMMITMENT_MISMATCH, update.commitment, got)
        if update.round > round:
            raise refuse(RejectReason.WRONG_ROUND, f"round {round}", update.round)
        if update.round < round:
            raise refuse(RejectReason.REPLAY, f"round {round}", update.round)
        if update.attempt > attempt:
            raise refuse(
                RejectReason.WRONG_ROUND, f"round {round} attempt {attempt}", update.attempt
            )
        if update.attempt < attempt:
            raise refuse(RejectReason.REPLAY, f"round {round} attempt {attempt}", update.attempt)
        seen = self._commitments.get((update.client_id, got))
        abandoned = seen is not None and seen[0] == round and seen[1] < attempt
        if update.signature in self._signatures or (seen is not None and not abandoned):
            raise refuse(RejectReason.REPLAY, "an update not accepted before", got)
        if (update.client_id, round, attempt) in self._accepted:
            where = f"round {round}" + (f" attempt {attempt}" if attempt else "")
            raise refuse(RejectReason.REPLAY, f"one update per client in {where}", "a second one")
        self._signatures.add(update.signature)
        self._commitments[(update.client_id, got)] = (round, attempt)
        self._accepted.add((update.client_id, round, attempt))
