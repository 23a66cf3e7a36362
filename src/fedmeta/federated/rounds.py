"""One federated round, top to bottom: sample → exchange over the transport → admit →
aggregate → strategy and accountant → the round's metrics row and ledger entry.

A round with fewer than `min_clients` usable updates (two under secure aggregation) is
retried with a fresh sample (a new attempt, a new random stream), then the run stops with
a clear error.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from fedmeta.errors import FedmetaError
from fedmeta.federated.server import Server
from fedmeta.federated.transport import Transport
from fedmeta.federated.wire import encode, raw

log = logging.getLogger("fedmeta.federated")


@dataclass(frozen=True)
class RoundResult:
    row: dict[str, Any]  # the metrics row
    entry: dict[str, Any]  # the ledger's `round` entry


def run_round(server: Server, transport: Transport, *, max_retries: int, min_clients: int, strategy: str,
              run_id: str = "") -> RoundResult:
    r, clip = server.round + 1, ({"clip_norm": server.clip_norm} if server.privacy.dp != "off" else {})
    for attempt in range(max_retries + 1):
        sampled, broadcast = server.broadcast(r, attempt, run_id)
        replies = transport.exchange(r, attempt, sampled, broadcast)
        admitted = server.admission(replies, r, server.params)
        if admitted.usable >= server.min_usable:
            break
        log.warning("round %d attempt %d: %d usable updates of %d sampled clients", r, attempt, admitted.usable, len(sampled))
    else:
        raise FedmetaError(
            f"round {r}: only {admitted.usable} of {len(sampled)} sampled clients returned usable updates "
            f"after {max_retries + 1} attempts; federated.min_clients = {min_clients}"
            + (" (secure aggregation needs 2)" if server.min_usable > min_clients else ""))
    aggregate = server.aggregate(admitted, r)
    server.apply(aggregate)
    counts = {"clients": len(replies.replies) - len(admitted.rejected), "sampled": len(sampled),
              "dropped": len(replies.dropped), "bytes_up": sum(len(m.data) for m in replies.replies.values()),
              "bytes_down": len(encode({k: raw(v) for k, v in server.params.items()})) * len(sampled)}
    rejected = [{"client": c, "reason": why} for c, why in admitted.rejected.items()]
    spent = server.privacy_spent()
    row = {"round": r, **counts, "rejected": rejected, "attempts": attempt + 1,
           **({"malicious": replies.malicious} if replies.malicious is not None else {}),
           **spent, **clip, **replies.costs, **aggregate.costs}
    entry = {"round": r, "commitments": admitted.commitments, "aggregation": strategy, "epsilon": spent.get("epsilon"),
             "delta": spent.get("delta"), "metrics": counts, "rejected": rejected, "refused": admitted.refused}
    return RoundResult(row, entry)
