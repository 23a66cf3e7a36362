"""Coordinate-wise median of the clients' updates.

Yin, Chen, Ramchandran & Bartlett, "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018 (the median-based gradient descent). Each
coordinate is the median of that coordinate over the clients (the mean of the two
middle values when their number is even), computed by numpy's selection-based
`np.median`. Breakdown point 1/2: fewer than half of the clients cannot move it
arbitrarily far. Unweighted, as in the paper: a client's weight is its own claim and a
Byzantine client could inflate it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedmeta.federated.robust.base import coordinatewise
from fedmeta.meta.base import Params


@dataclass(frozen=True)
class CoordinateMedian:
    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        return coordinatewise(updates, lambda x: np.median(x, axis=0))  # x: (clients, *shape)
