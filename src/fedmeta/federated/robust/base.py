"""What the robust aggregators share: their call signature, the flat (clients, dim) and
per-coordinate views of a batch of updates, and checks of their options (the factory is
`fedmeta.federated.registry.build`).

An aggregator maps the clients' updates Δ_i = θ_local − θ and their weights to one
update; it replaces `weighted_mean` and nothing else, so any server strategy is applied
to its output. Each aggregator is a frozen dataclass whose fields are the
`federated.robust.<option>` keys it takes, checked on construction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from fedmeta.errors import BadInput
from fedmeta.params import Params, stack


class Aggregator(Protocol):
    def __call__(self, updates: list[Params], weights: list[float]) -> Params: ...


def as_rows(updates: list[Params], weights: list[float]) -> tuple[Tensor, Tensor]:
    """The updates as rows of one float64 matrix (clients, dim), and the weights normalised
    to sum to 1 (clients,)."""
    if not updates:
        raise ValueError("robust aggregation needs at least one update")
    if len(weights) != len(updates):
        raise ValueError(f"{len(updates)} updates but {len(weights)} weights")
    w = torch.tensor(weights, dtype=torch.float64)  # (clients,)
    if not (torch.all(w >= 0) and w.sum() > 0):
        raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
    return stack(updates), w / w.sum()


def coordinatewise(updates: list[Params], statistic: Callable[[np.ndarray], np.ndarray]) -> Params:
    """Apply `statistic` over the client axis of each tensor, (clients, *shape) -> shape,
    in the updates' own dtype (enough for order statistics)."""
    if not updates:
        raise ValueError("robust aggregation needs at least one update")
    out = {}
    for name, ref in updates[0].items():
        stacked = np.stack([u[name].detach().numpy() for u in updates])  # (clients, *shape)
        out[name] = torch.from_numpy(np.asarray(statistic(stacked))).to(ref.dtype)
    return out



def squared_distances(gram: Tensor) -> Tensor:
    """‖x_i − x_j‖² from the Gram matrix G = X Xᵀ: G_ii + G_jj − 2 G_ij, clamped at 0."""
    sq = gram.diagonal()  # (clients,)
    return (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0)  # (clients, clients)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_count(field: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise BadInput(field, value, f"an integer >= {minimum}")


def check_positive(field: str, value: Any) -> None:
    if not (_is_number(value) and value > 0):
        raise BadInput(field, value, "a finite number > 0")


def check_non_negative(field: str, value: Any) -> None:
    if not (_is_number(value) and value >= 0):
        raise BadInput(field, value, "a finite number >= 0")
