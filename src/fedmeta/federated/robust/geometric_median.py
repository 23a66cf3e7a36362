"""Geometric median by the smoothed Weiszfeld algorithm (robust federated aggregation, RFA).

Pillutla, Kakade & Harchaoui, "Robust Aggregation for Federated Learning", IEEE
Transactions on Signal Processing 70, 2022. Approximately minimises Σ_i w_i ‖x_i − z‖
by Weiszfeld iterations z ← Σ β_i x_i / Σ β_i with β_i = w_i / max(ν, ‖z − x_i‖),
starting from the weighted mean and stopping when the objective improves by less than a
relative 1e-10 (or after `geomed_max_iter` iterations). ν > 0 (`federated.robust.geomed_smoothing`, in the
units of the updates) keeps a step finite when z lands on an update. Breakdown point 1/2
of the total weight.

z stays in the span of the updates, z = cᵀX, so every iteration works on the n × n Gram
matrix G = X Xᵀ (‖z − x_i‖² = G_ii − 2(Gc)_i + cᵀGc) and costs O(n²), not O(n·dim).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.federated.robust.base import as_rows, check_count, check_positive
from fedmeta.params import Params, unflatten

RELATIVE_TOLERANCE = 1e-10


@dataclass(frozen=True)
class GeometricMedian:
    geomed_smoothing: float = 1e-6  # ν
    geomed_max_iter: int = 1000

    def __post_init__(self) -> None:
        check_positive("federated.robust.geomed_smoothing", self.geomed_smoothing)
        check_count("federated.robust.geomed_max_iter", self.geomed_max_iter, 1)

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        x, w = as_rows(updates, weights)  # (clients, dim), (clients,)
        gram = x @ x.T  # (clients, clients)
        sq = gram.diagonal()  # (clients,)
        c, previous = w, float("inf")  # z = cᵀX, the weighted mean
        for _ in range(self.geomed_max_iter):
            gc = gram @ c  # (clients,)
            dist = (sq - 2 * gc + c @ gc).clamp_min(0).sqrt()  # ‖z − x_i‖, (clients,)
            objective = float(w @ dist)
            if previous - objective <= RELATIVE_TOLERANCE * objective:
                break
            previous = objective
            beta = w / dist.clamp_min(self.geomed_smoothing)
            c = beta / beta.sum()
        return unflatten(c @ x, updates[0])
