"""The ground floor: parameters and updates as dicts name -> tensor, and what every room
does with them: weighted sums and means, flat rows, norms and clipping.

Every other module takes these from here; each is written once. Sums and means run in
float64 and return the updates' own dtype, so the result does not depend on how many
clients a round had or in which precision they trained.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedmeta.errors import BadInput

Params = dict[str, Tensor]  # a model's parameters, or an update Δ = θ_local − θ shaped like them


class Stacked(Sequence[Params]):
    """Updates held as one tensor per name with a leading clients axis, (clients, *shape);
    item i is the i-th update (views), built on access. `weighted_sum` reads the tensors
    whole instead of stacking the items again."""

    def __init__(self, tensors: Params):
        self.tensors = tensors
        self.n = len(next(iter(tensors.values()))) if tensors else 0

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self.n))]
        if not -self.n <= i < self.n:
            raise IndexError(i)
        return {name: t[i] for name, t in self.tensors.items()}

    def take(self, rows: list[int]) -> Stacked:
        """The updates of `rows` (indices), stacked."""
        index = torch.tensor(rows, dtype=torch.long)
        return Stacked({name: t.index_select(0, index) for name, t in self.tensors.items()})


class PerClient(Mapping[int, Any]):
    """Client -> its update (or what stands for it), in the order added; a block of clients'
    updates may be `Stacked`, its items then built on access."""

    def __init__(self) -> None:
        self.blocks: list[tuple[list[int], Sequence[Any]]] = []
        self._at: dict[int, tuple[Sequence[Any], int]] = {}

    def add(self, clients: list[int], values: Sequence[Any]) -> None:
        """`values[i]` is client `clients[i]`'s."""
        self.blocks.append((clients, values))
        self._at.update((c, (values, i)) for i, c in enumerate(clients))

    def __getitem__(self, client: int) -> Any:
        values, i = self._at[client]
        return values[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self._at)

    def __len__(self) -> int:
        return len(self._at)

    def rows(self, clients: list[int]) -> Sequence[Any]:
        """The values of `clients` in that order, each built on access: the block itself when
        one `Stacked` block holds exactly them."""
        if len(self.blocks) == 1 and isinstance(self.blocks[0][1], Stacked) and self.blocks[0][0] == clients:
            return self.blocks[0][1]
        return Rows(self, clients)


class Rows(Sequence[Any]):
    """`values[c]` for each c of `clients`, looked up on access."""

    def __init__(self, values: Mapping[int, Any], clients: list[int]):
        self.values, self.clients = values, clients

    def __len__(self) -> int:
        return len(self.clients)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self.values[c] for c in self.clients[i]]
        return self.values[self.clients[i]]


def weighted_sum(updates: Sequence[Params], weights: Sequence[float] | Tensor | None = None) -> Params:
    """Σ_k w_k Δ_k over clients (w_k = 1 when `weights` is None)."""
    if not updates:
        raise BadInput("updates", [], "at least one client update")
    w = torch.ones(len(updates), dtype=torch.float64) if weights is None else torch.as_tensor(weights, dtype=torch.float64)
    if w.shape != (len(updates),):
        raise BadInput("weights", tuple(w.shape), f"shape ({len(updates)},): one weight per update")
    out = {}
    for name, t in updates[0].items():
        rows = updates.tensors[name] if isinstance(updates, Stacked) else torch.stack([u[name] for u in updates])
        stacked = rows.to(torch.float64, memory_format=torch.contiguous_format)  # (clients, *shape); exact
        out[name] = torch.tensordot(w, stacked, dims=1).to(t.dtype)
    return out


def weighted_mean(updates: Sequence[Params], weights: Sequence[float]) -> Params:
    """Σ_k w_k Δ_k / Σ_k w_k (weights ≥ 0 with a positive sum)."""
    w = torch.as_tensor(weights, dtype=torch.float64)
    if w.ndim != 1 or not (torch.all(w >= 0) and w.sum() > 0):
        raise BadInput("weights", list(weights), "weights >= 0 with a positive sum, one per update")
    return weighted_sum(updates, w / w.sum())


def flatten(update: Params) -> Tensor:
    """One float64 vector (dim,) of all tensors in name order."""
    return torch.cat([t.detach().reshape(-1).to(torch.float64) for t in update.values()])


def stack(updates: Sequence[Params]) -> Tensor:
    """The updates as rows of one float64 matrix (clients, dim), in the first update's name order."""
    if not updates:
        raise BadInput("updates", [], "at least one client update")
    names = list(updates[0])
    return torch.stack([flatten({k: u[k] for k in names}) for u in updates])


def unflatten(vector: Tensor | np.ndarray, like: Params) -> Params:
    """Split a flat vector (dim,) into tensors with the names, shapes and dtypes of `like`."""
    vector = torch.as_tensor(vector)
    sizes = [t.numel() for t in like.values()]
    if vector.shape != (sum(sizes),):
        raise BadInput("vector", f"shape {tuple(vector.shape)}", f"length {sum(sizes)} (the parameters' size)")
    out, start = {}, 0
    for (name, ref), n in zip(like.items(), sizes, strict=True):
        out[name] = vector[start : start + n].reshape(ref.shape).to(ref.dtype)
        start += n
    return out


def weighted_rows(updates: Sequence[Params], weights: Sequence[float]) -> np.ndarray:
    """(clients, dim + 1): row k is [w_k·Δ_k flattened, w_k] in float64 — what a secure or
    encrypted sum adds up, so the server learns Σ w·Δ and Σ w and nothing per client."""
    if not updates:
        raise BadInput("updates", "[]", "at least one client update")
    if len(weights) != len(updates):
        raise BadInput("weights", f"{len(weights)} weights", f"one weight per update ({len(updates)})")
    bad = [w for w in weights if not (math.isfinite(w) and w > 0)]
    if bad:
        raise BadInput("weights", bad[0], "finite weights > 0")
    layout = {k: t.shape for k, t in updates[0].items()}
    for i, u in enumerate(updates):
        if {k: t.shape for k, t in u.items()} != layout:
            raise BadInput("updates", f"update {i} differs in names or shapes", "updates shaped like update 0")
    return np.stack([
        np.concatenate([(w * u[k].double()).reshape(-1).numpy() for k in layout] + [np.array([w])])
        for u, w in zip(updates, weights, strict=True)
    ])


def global_norm(update: Params) -> float:
    """‖Δ‖₂ over all tensors taken together."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in update.values()))


def clip(update: Params, max_norm: float) -> Params:
    """Δ · min(1, C / ‖Δ‖₂): unchanged when already within C."""
    norm = global_norm(update)
    if norm <= max_norm:
        return dict(update)
    return {name: t * (max_norm / norm) for name, t in update.items()}

