"""Krum and Multi-Krum.

Blanchard, El Mhamdi, Guerraoui & Stainer, "Machine Learning with Adversaries:
Byzantine Tolerant Gradient Descent", NeurIPS 2017. With n clients of which at most f
are Byzantine (n > 2f + 2), client i's score is the sum of its squared distances to its
n − f − 2 nearest other updates. Krum returns the update with the lowest score;
Multi-Krum averages the m lowest-scoring updates (m = n − f by default), here weighted
by the clients' weights, so with f = 0 and m = n it is the weighted mean. Krum's
guarantee holds for f < (n − 2)/2, i.e. a breakdown point just under 1/2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.errors import BadInput
from fedmeta.federated.robust.base import as_rows, check_count, squared_distances
from fedmeta.params import Params, unflatten


def krum_scores(x: Tensor, byzantine: int) -> Tensor:
    """Score of each row of x (clients, dim): Σ of its n − f − 2 smallest squared distances
    to the other rows."""
    n = x.shape[0]
    if n <= 2 * byzantine + 2:
        bound = f"so f <= {(n - 3) // 2}" if n >= 3 else "and n >= 3 for any f"
        raise BadInput("federated.robust.byzantine_clients", byzantine,
                       f"Krum needs n > 2f + 2 updates per round; this round has n = {n}, {bound}")
    d2 = squared_distances(x @ x.T)  # (clients, clients)
    d2.fill_diagonal_(float("inf"))
    return d2.topk(n - byzantine - 2, dim=1, largest=False).values.sum(1)  # (clients,)


@dataclass(frozen=True)
class MultiKrum:
    byzantine_clients: int = 1  # f
    krum_selected: int | None = None  # m; None means n − f

    def __post_init__(self) -> None:
        check_count("federated.robust.byzantine_clients", self.byzantine_clients, 0)
        if self.krum_selected is not None:
            check_count("federated.robust.krum_selected", self.krum_selected, 1)

    def select(self, x: Tensor) -> Tensor:
        """Indices of the m lowest-scoring rows of x (clients, dim), best first."""
        n, f = x.shape[0], self.byzantine_clients
        scores = krum_scores(x, f)
        m = n - f if self.krum_selected is None else self.krum_selected
        if m > n - f:
            raise BadInput("federated.robust.krum_selected", m, f"at most n − f = {n - f} (n = {n} updates, f = {f})")
        return scores.argsort(stable=True)[:m]

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        x, w = as_rows(updates, weights)  # (clients, dim), (clients,)
        chosen = self.select(x)  # (m,)
        wc = w[chosen]
        wc = wc / wc.sum() if wc.sum() > 0 else torch.full_like(wc, 1 / len(wc))  # all chosen weigh 0: plain average
        return unflatten(wc @ x[chosen], updates[0])


@dataclass(frozen=True)
class Krum:
    """The single update with the lowest score (Multi-Krum with m = 1)."""

    byzantine_clients: int = 1  # f

    def __post_init__(self) -> None:
        check_count("federated.robust.byzantine_clients", self.byzantine_clients, 0)

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        x, _ = as_rows(updates, weights)  # (clients, dim)
        return unflatten(x[MultiKrum(self.byzantine_clients, 1).select(x)[0]], updates[0])
