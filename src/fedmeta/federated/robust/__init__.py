"""Byzantine-robust aggregation: drop-in replacements for the weighted mean of updates.

Every aggregator is called as `aggregate(updates, weights) -> update` and is built by
`make_robust(name, **options)`, whose keyword options are the `federated.<option>`
settings the aggregator takes (see each class's fields). Robust aggregation needs every
client's update in the clear, so it cannot run on masked (secure aggregation) or
encrypted (CKKS) sums.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedmeta.federated.robust.base import Aggregator, make_from, options_of
from fedmeta.federated.robust.geometric_median import GeometricMedian
from fedmeta.federated.robust.krum import Krum, MultiKrum, krum_scores
from fedmeta.federated.robust.median import CoordinateMedian
from fedmeta.federated.robust.norm_bound import NormBound
from fedmeta.federated.robust.trimmed_mean import TrimmedMean
from fedmeta.params import Params, weighted_mean


@dataclasses.dataclass(frozen=True)
class Mean:
    """The plain weighted mean, Σ w_i Δ_i / Σ w_i (not robust: one client can move it anywhere)."""

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        return weighted_mean(updates, weights)


ROBUST: dict[str, type] = {
    "mean": Mean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multikrum": MultiKrum,
    "geometric_median": GeometricMedian,
    "norm_bound": NormBound,
}


def make_robust(name: str, **options: Any) -> Aggregator:
    """The aggregator `name` (a key of ROBUST) configured by its `federated.*` options."""
    return make_from(ROBUST, "aggregator", name, options)


__all__ = [
    "ROBUST",
    "Aggregator",
    "CoordinateMedian",
    "GeometricMedian",
    "Krum",
    "Mean",
    "MultiKrum",
    "NormBound",
    "TrimmedMean",
    "krum_scores",
    "make_robust",
    "options_of",
]
