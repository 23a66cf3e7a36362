"""Who masks with and holds shares for whom: the complete graph or a SecAgg+ sparse graph.

Bonawitz et al., CCS 2017 connect every pair of clients. Bell et al., "Secure Single-Server
Aggregation with (Poly)Logarithmic Overhead", CCS 2020, replace that by a random graph of
degree O(log n): each client masks with and shares its secrets among its neighbours only.
We use a Harary graph (every client joined to the degree/2 nearest on either side of a
cycle) over a random order of the clients drawn from the session's public seed, so the
graph is k-regular and every party can recompute it without trusting the server.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence

import numpy as np

from fedmeta.errors import ConfigError

COMPLETE = "complete"
SECAGG_PLUS = "secagg+"


def default_degree(n: int) -> int:
    """Even degree about 3 log2(n) (Bell et al.'s O(log n)), or n-1 when that is not smaller."""
    k = 2 * math.ceil(1.5 * math.log2(max(n, 2)))
    return min(n - 1, k)


def neighbours(
    clients: Sequence[int], kind: str, degree: int, seed: bytes
) -> dict[int, frozenset[int]]:
    """Map each client id to its neighbours (never itself) in a `kind` graph."""
    ids = sorted(clients)
    n = len(ids)
    if kind == COMPLETE or degree == n - 1:
        everyone = frozenset(ids)
        return {u: everyone - {u} for u in ids}
    if kind != SECAGG_PLUS:
        raise ConfigError("neighbourhood", kind, f"{COMPLETE!r} or {SECAGG_PLUS!r}")
    if degree % 2 or not 2 <= degree < n - 1:
        raise ConfigError("degree", degree, f"an even integer in [2, {n - 2}] or {n - 1}")
    entropy = int.from_bytes(hashlib.sha256(b"fedmeta/secagg/graph" + seed).digest(), "big")
    order = np.random.default_rng(entropy).permutation(ids).tolist()
    half = degree // 2
    return {
        u: frozenset(order[(i + d) % n] for d in range(-half, half + 1) if d)
        for i, u in enumerate(order)
    }
