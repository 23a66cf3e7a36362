"""How a round reaches the clients and their updates come back: one small interface,
`Transport.exchange(round, attempt, sampled, broadcast) -> Replies`, with two
implementations — in-process clients (`inprocess.py`, vmapped or looped) and Flower
supernodes (`fedmeta.deploy.transport`). Everything before (sampling) and after (admission,
aggregation, strategy, accountant, ledger) is the same code for both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from fedmeta.ledger.commitments import SignedUpdate
from fedmeta.params import Params


@dataclass(frozen=True)
class Reply:
    """One client's answer: the bytes it sent (an encoded update, or its masked input under
    secure aggregation), its aggregation weight, adaptive clipping's report, its signature."""

    data: bytes
    weight: float
    report: float = 0.0
    signed: SignedUpdate | None = None


@dataclass
class Summed:
    """A sum the clients computed by masking (secure aggregation over a transport): the
    server never holds an individual update, only Σ w·row and Σ w (None: the protocol
    aborted), and which clients the sum includes."""

    total: Params | None
    weight: float
    included: frozenset[int]


@dataclass
class Replies:
    sampled: list[int]
    attempt: int
    replies: dict[int, Reply] = field(default_factory=dict)
    dropped: dict[int, str] = field(default_factory=dict)  # client -> why it is not in `replies`
    malicious: int | None = None  # simulated attackers among the replies (None: no attack)
    summed: Summed | None = None
    refused: dict[int, dict[str, Any]] = field(default_factory=dict)  # signature refusals met on the way
    costs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Broadcast:
    """What the server sends a round's clients, and what the transport may use of the round."""

    params: Params
    clip_norm: float  # client-level DP's C this round (0 without client-level DP)
    run_id: str  # the run whose ledger signatures are for ("" = unsigned)
    generator: torch.Generator  # the round's stream after sampling (in-process clients continue it)
    aggregation: Any  # the server's aggregation pipeline (rows, weights and clip of a secure sum)
    check_signature: Callable[[int, bytes, SignedUpdate | None], dict[str, Any] | None]


class Transport(Protocol):
    signs: bool  # whether the clients sign (in-process: with keys the config names; deployed: their own)

    def exchange(self, round_: int, attempt: int, sampled: list[int], broadcast: Broadcast) -> Replies: ...
