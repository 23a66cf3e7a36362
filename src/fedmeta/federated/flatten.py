"""Updates as flat float64 rows, the form in which the secure and the encrypted sums carry them.

Both summing steps add each client's row [w·Δ, w] (Δ's tensors flattened in the order of the
first update's names, then the weight), so the server learns Σ w·Δ and Σ w and nothing per
client; `unflatten` splits the total back into tensors shaped and typed like Δ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from fedmeta.errors import BadInput
from fedmeta.meta.base import Params


def weighted_rows(updates: Sequence[Params], weights: Sequence[float]) -> np.ndarray:
    """(clients, dim + 1): row i is [w_i·Δ_i flattened, w_i] in float64."""
    if not updates:
        raise BadInput("updates", "[]", "at least one client update")
    if len(weights) != len(updates):
        raise BadInput(
            "weights", f"{len(weights)} weights", f"one weight per update ({len(updates)})"
        )
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise BadInput("weights", bad[0], "finite weights > 0")
    layout = {k: t.shape for k, t in updates[0].items()}
    for i, u in enumerate(updates):
        if {k: t.shape for k, t in u.items()} != layout:
            raise BadInput(
                "updates", f"update {i} differs in names or shapes", "updates shaped like update 0"
            )
    return np.stack(
        [
            np.concatenate(
                [(w * u[k].double()).reshape(-1).numpy() for k in layout] + [np.array([w])]
            )
            for u, w in zip(updates, weights, strict=True)
        ]
    )  # (clients, dim + 1)


def unflatten(vector: np.ndarray, like: Params) -> Params:
    """Split a flat vector (dim,) into tensors with the names, shapes and dtypes of `like`."""
    sizes = [t.numel() for t in like.values()]
    if len(vector) != sum(sizes):
        raise BadInput(
            "vector", f"length {len(vector)}", f"length {sum(sizes)} (the parameters' size)"
        )
    parts = np.split(np.asarray(vector), np.cumsum(sizes)[:-1])
    return {
        k: torch.from_numpy(part.copy()).reshape(t.shape).to(t.dtype)
        for (k, t), part in zip(like.items(), parts, strict=True)
    }
