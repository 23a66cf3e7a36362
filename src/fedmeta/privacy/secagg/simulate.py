"""In-process driver: runs SecAggClient/SecAggServer (Bonawitz et al., CCS 2017) over lists.

The same bytes a networked runtime would carry are produced, counted and parsed here; a
client listed in `dropouts[phase]` sends nothing from that phase on.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedmeta.errors import ConfigError
from fedmeta.privacy.secagg.graph import COMPLETE
from fedmeta.privacy.secagg.protocol import (
    PartyStats,
    Phase,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)


@dataclass(frozen=True)
class SecAggStats:
    """Per-party costs of one secure sum and who ended up in it."""

    clients: dict[int, PartyStats]
    server: PartyStats
    included: frozenset[int]  # clients whose inputs are in the sum

    def client_seconds_per_client(self) -> float:
        """Total client wall time divided by the number of clients."""
        return sum(s.total_seconds for s in self.clients.values()) / len(self.clients)

    def client_bytes_sent_per_client(self) -> float:
        return sum(s.total_bytes_sent for s in self.clients.values()) / len(self.clients)


def secure_sum(
    inputs: Sequence[np.ndarray],
    threshold: int,
    dropouts: Mapping[Phase, Collection[int]] | None = None,
    *,
    clip: float = 1.0,
    bits: int = 32,
    neighbourhood: str = COMPLETE,
    degree: int | None = None,
    rng: random.Random | None = None,
) -> tuple[np.ndarray, SecAggStats]:
    """Sum of the inputs (clipped to [-clip, clip]) of the clients that sent masked inputs.

    Client `i` holds `inputs[i]`. `dropouts[p]` lists clients that go silent from phase `p`
    on (`Phase.UNMASK`: after sending the masked input). `rng` makes every key, share and
    mask reproducible (tests and benchmarks only); by default randomness comes from the OS.
    """
    dropouts = dropouts or {}
    if any(not 0 <= c < len(inputs) for cs in dropouts.values() for c in cs):
        raise ConfigError("dropouts", dict(dropouts), f"client indices in [0, {len(inputs)})")
    randbytes = rng.randbytes if rng else secrets.token_bytes
    dims = {np.shape(x) for x in inputs}
    if len(dims) != 1 or len(next(iter(dims))) != 1:
        raise ConfigError("inputs", sorted(dims), "vectors of one common length")
    config = SecAggConfig(
        clients=tuple(range(len(inputs))),
        threshold=threshold,
        dim=len(inputs[0]),
        clip=clip,
        bits=bits,
        neighbourhood=neighbourhood,
        degree=degree,
        session=randbytes(16),
    )
    server = SecAggServer(config)
    clients = {
        i: SecAggClient(
            config, i, _randbytes=random.Random(randbytes(16)).randbytes if rng else None
        )
        for i in config.clients
    }

    def live(phase: Phase) -> list[int]:
        gone = set().union(*(dropouts.get(p, ()) for p in Phase if p <= phase))
        return [i for i in clients if i not in gone]

    to_clients = server.collect_keys({i: clients[i].advertise() for i in live(Phase.ADVERTISE)})
    to_clients = server.collect_shares(
        {i: clients[i].share_keys(to_clients[i]) for i in live(Phase.SHARE_KEYS)}
    )
    to_clients = server.collect_masked(
        {i: clients[i].masked_input(to_clients[i], inputs[i]) for i in live(Phase.MASKED_INPUT)}
    )
    total = server.unmask(
        {i: clients[i].unmask(to_clients[i]) for i in live(Phase.UNMASK) if i in to_clients}
    )
    return total, SecAggStats(
        {i: c.stats for i, c in clients.items()}, server.stats, server.survivors
    )
