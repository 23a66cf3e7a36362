"""Coordinate-wise trimmed mean of the clients' updates.

Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018 (the trimmed-mean-based gradient descent). For
each coordinate, drop the ⌊βn⌋ largest and the ⌊βn⌋ smallest of the n clients' values
and average the rest (`scipy.stats.trim_mean`). With β ≥ f/n it tolerates f Byzantine
clients; its breakdown point is β < 1/2. β = 0 is the unweighted mean. Unweighted, as
in the paper: a client's weight is its own claim and a Byzantine client could inflate it.
"""

from __future__ import annotations

from dataclasses import dataclass

from scipy.stats import trim_mean

from fedmeta.errors import BadInput
from fedmeta.federated.robust.base import coordinatewise
from fedmeta.meta.base import Params


@dataclass(frozen=True)
class TrimmedMean:
    trim_fraction: float = 0.1  # β, cut from each end

    def __post_init__(self) -> None:
        beta = self.trim_fraction
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 <= beta < 0.5:
            raise BadInput("federated.robust.trim_fraction", beta, "a fraction β with 0 <= β < 0.5, cut from each end")

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        return coordinatewise(updates, lambda x: trim_mean(x, self.trim_fraction, axis=0))  # x: (clients, *shape)
