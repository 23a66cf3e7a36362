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


def min_threshold(degree: int) -> int:
    """Smallest threshold over a neighbourhood of `degree` + 1 holders: a strict majority."""
    return (degree + 1) // 2 + 1


def degree_for(n: int, dropout_rate: float = 0.1, failure: float = 1e-6) -> int:
    """Smallest even degree at which, with each client dropping independently at
    `dropout_rate`, the chance that any of the n clients keeps fewer than
    `min_threshold(degree)` live neighbours is at most `failure` (union bound over an exact
    binomial tail); n - 1 (the complete graph) when no smaller degree does. This is the
    O(log n) degree of Bell et al., Sec. 3, for our majority threshold.
    """
    if not 0 <= dropout_rate < 1 or not 0 < failure < 1:
        raise ConfigError("(dropout_rate, failure)", (dropout_rate, failure), "both in [0, 1)")
    live = 1 - dropout_rate
    for k in range(2, n - 1, 2):
        tail = sum(
            math.comb(k, i) * live**i * dropout_rate ** (k - i) for i in range(min_threshold(k))
        )
        if n * tail <= failure:
            return k
    return max(n - 1, 1)


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
