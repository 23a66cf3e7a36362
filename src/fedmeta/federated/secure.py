"""Secure aggregation as the server's summing step (Bonawitz et al. 2017; SecAgg+ of
Bell et al. 2020), run through the protocol's state machines in-process.

The server learns only Σ_i w_i·Δ_i and Σ_i w_i: each client masks the vector
[w_i·Δ_i, w_i] (fixed-point, coordinates clipped to [−clip, clip]), so example-weighted
FedAvg and DP-FedAvg's unit weights both go through the same sum. The server cannot
inspect individual updates; the runtime's update checks act as each client's own check
before masking.
"""

from __future__ import annotations

import math

from fedmeta.params import Params, unflatten, weighted_rows
from fedmeta.privacy.secagg.graph import COMPLETE, SECAGG_PLUS
from fedmeta.privacy.secagg.simulate import SecAggStats, secure_sum

GRAPHS = {"secagg": COMPLETE, "secagg+": SECAGG_PLUS}  # SecAgg: everyone is a neighbour


def threshold_for(clients: int) -> int:
    """A strict majority of the clients in the aggregation, as the protocol requires."""
    return clients // 2 + 1


def secure_weighted_sum(
    updates: list[Params], weights: list[float], *, clip: float, neighbourhood: str
) -> tuple[Params, float, SecAggStats]:
    """(Σ w_i Δ_i, Σ w_i) computed by secure aggregation, and the protocol's costs."""
    rows = weighted_rows(updates, weights)  # (clients, dim + 1)
    total, stats = secure_sum(rows, threshold_for(len(rows)), clip=clip, neighbourhood=GRAPHS[neighbourhood])
    return unflatten(total[:-1], updates[0]), float(total[-1]), stats


def weight_scale(weights: list[float]) -> float:
    """Divide example counts by this so every weight lies in (0, 1] for the fixed-point range."""
    return max(1.0, math.ceil(max(weights)))
