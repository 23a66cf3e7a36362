"""Byzantine-robust aggregation: drop-in replacements for the weighted mean of updates.

Every aggregator is called as `aggregate(updates, weights) -> update` and is built from
the `[federated.robust]` section by `build(ROBUST, cfg.federated.robust.rule,
cfg.federated.robust)` (fedmeta.federated.registry), or from keyword options by
`make_robust(name, **options)`; its options are the section's keys it declares as fields.
A new rule is one file with its class and one line in ROBUST; one outside fedmeta is named
by import path ("pkg.mod:Class") or a `fedmeta.plugins` entry point (docs/extending.md). Robust aggregation needs every
client's update in the clear, so it cannot run on masked (secure aggregation) or
encrypted (CKKS) sums.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from fedmeta.federated.registry import Registry, build, options_of
from fedmeta.federated.robust.base import Aggregator
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


ROBUST = Registry("federated.robust", "rule", {
    "mean": Mean,
    "median": CoordinateMedian,
    "trimmed_mean": TrimmedMean,
    "krum": Krum,
    "multikrum": MultiKrum,
    "geometric_median": GeometricMedian,
    "norm_bound": NormBound,
})


def make_robust(name: str, **options: Any) -> Aggregator:
    """The aggregator `name` (a key of ROBUST) with keyword options (keys of [federated.robust])."""
    return build(ROBUST, name, options)


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
