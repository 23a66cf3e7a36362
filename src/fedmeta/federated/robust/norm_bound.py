"""Norm bounding: clip every update to L2 norm M, then take the weighted mean.

Sun, Kairouz, Suresh & McMahan, "Can You Really Backdoor Federated Learning?",
arXiv:1911.07963, 2019. It does not reject anyone (breakdown point 0: f clients can
still move the mean by up to M·Σ_{Byzantine} w_i), but it bounds that influence, which
defeats the scaled updates of model replacement.
"""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.federated.robust.base import check_positive
from fedmeta.params import Params, clip, weighted_mean


@dataclass(frozen=True)
class NormBound:
    norm_bound: float = 1.0  # M

    def __post_init__(self) -> None:
        check_positive("federated.robust.norm_bound", self.norm_bound)

    def __call__(self, updates: list[Params], weights: list[float]) -> Params:
        return weighted_mean([clip(u, self.norm_bound) for u in updates], weights)
