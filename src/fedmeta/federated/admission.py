"""The server's admission of a round's replies: signature, replay and validation, returned
as a value (`Admitted`), never as side-channel state.

With signed updates, a reply must be signed by the registered key of the client that sent
it, for this run, round and attempt, once (`fedmeta.ledger.commitments.UpdateVerifier`);
a refusal is kept for the ledger. Then the bytes must decode to exactly the global
model's tensor names and shapes, in float32, all finite (`validation.py`). The updates a
secure sum already added up (`Summed`) were checked by their clients before masking.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from fedmeta.federated.transport import Replies, Summed
from fedmeta.federated.validation import check_updates
from fedmeta.ledger.commitments import SignatureRefused, SignedUpdate, UpdateVerifier, commitment
from fedmeta.params import Params, PerClient

log = logging.getLogger("fedmeta.federated")


@dataclass
class Admitted:
    """What a round may aggregate, and what happened to the rest."""

    updates: PerClient = field(default_factory=PerClient)  # decoded, by client (in-the-clear replies)
    weights: dict[int, float] = field(default_factory=dict)
    reports: dict[int, float] = field(default_factory=dict)
    summed: Summed | None = None
    rejected: dict[int, str] = field(default_factory=dict)  # client -> reason
    refused: list[dict[str, Any]] = field(default_factory=list)  # signature refusals, as the ledger records them
    commitments: dict[str, str] = field(default_factory=dict)  # SHA-256 of each admitted reply's bytes

    @property
    def usable(self) -> int:
        """How many clients' updates the aggregate would include."""
        if self.summed is None:
            return len(self.updates)
        return len(self.summed.included) if self.summed.total is not None else 0


class Admission:
    def __init__(self) -> None:
        self.verifier: UpdateVerifier | None = None

    def enable_signing(self, run_id: str, registered: dict[str, str]) -> None:
        """From now on only updates signed by a registered key are admitted."""
        self.verifier = UpdateVerifier(registered, run_id)

    def check_signature(self, round_: int, attempt: int, cid: int, data: bytes,
                        signed: SignedUpdate | None) -> dict[str, Any] | None:
        """None if the reply may proceed, else the refusal as the ledger records it. `cid` is
        the sender as the transport knows it (in-process: the client whose slot carries the
        message; deployed: the client of the node that replied)."""
        if self.verifier is None:
            return None
        if signed is None:
            return {"client_id": str(cid), "round": round_, "reason": "unknown_key",
                    "detail": f"client {cid} sent an unsigned update"}
        try:
            self.verifier.check(signed, data, round_, attempt, sender=str(cid))
        except SignatureRefused as err:
            return err.record()
        return None

    def __call__(self, replies: Replies, round_: int, params: Params) -> Admitted:
        out = Admitted(summed=replies.summed, refused=list(replies.refused.values()))
        out.rejected = {c: f"{r['reason']}: {r['detail']}" for c, r in replies.refused.items()}
        if replies.summed is None:  # masked inputs: signatures were checked on the way
            refusals = {cid: self.check_signature(round_, replies.attempt, cid, reply.data, reply.signed)
                        for cid, reply in replies.replies.items()}
            out.updates, invalid = check_updates({c: r.data for c, r in replies.replies.items() if refusals[c] is None},
                                                 params)
            for cid, reply in replies.replies.items():
                refusal, err = refusals[cid], invalid.get(cid)
                if refusal is not None:
                    out.rejected[cid] = f"{refusal['reason']}: {refusal['detail']}"
                    out.refused.append(refusal)
                    log.warning("round %d: %s", round_, refusal["detail"])
                elif err is not None:
                    out.rejected[cid] = err.reason
                    log.warning("round %d: %s", round_, err)
                else:
                    out.weights[cid], out.reports[cid] = reply.weight, reply.report
        out.commitments = {str(c): commitment(r.data) for c, r in replies.replies.items() if c not in out.rejected}
        return out
