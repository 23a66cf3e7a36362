"""The server-strategy interface: a pure (init, apply) pair over parameter dicts.

`apply` receives the aggregated client update Δ (the weighted mean of θ_local − θ) and
returns the next global parameters; the state holds server-optimizer moments as plain
tensors so it checkpoints. Cross-cutting features (DP, secure aggregation) wrap the
aggregation step, not the strategy.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch

from fedmeta.meta.base import Params

State = dict[str, Any]


class Strategy(Protocol):
    def init(self, params: Params) -> State: ...

    def apply(self, params: Params, delta: Params, state: State) -> tuple[Params, State]: ...


def weighted_mean(updates: list[Params], weights: list[float]) -> Params:
    """Σ_i w_i Δ_i / Σ_i w_i, computed in float64 and returned in the updates' dtype."""
    if not updates:
        raise ValueError("weighted_mean needs at least one update")
    w = torch.tensor(weights, dtype=torch.float64)
    w = w / w.sum()
    out = {}
    for k, ref in updates[0].items():
        stacked = torch.stack([u[k].to(torch.float64) for u in updates])  # (clients, *shape)
        out[k] = torch.tensordot(w, stacked, dims=1).to(ref.dtype)
    return out
