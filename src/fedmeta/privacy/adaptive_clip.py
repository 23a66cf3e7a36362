"""Quantile-based adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021,
"Differentially Private Learning with Adaptive Clipping"): the server side of the clip
norm's update, and the noise multiplier that leaves room for the noisy count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from fedmeta.errors import BadInput
from fedmeta.privacy.noise import rng_for

State = dict[str, Any]  # {"clip", "seed", "step"}: floats, ints and None, so it checkpoints
_COUNT_STREAM = 2  # the count's noise stream under a seed (0 and 1 were other stages' streams)


def _positive(field: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise BadInput(field, value, "a positive number")
    return float(value)


def _non_negative(field: str, value: float) -> float:
    if not (value >= 0 and math.isfinite(value)):
        raise BadInput(field, value, "a finite number >= 0")
    return float(value)


@dataclass(frozen=True)
class AdaptiveClip:
    """Server side of quantile-based adaptive clipping (Andrew et al. 2021, geometric rule).

    Each round the clients clip with the current C (`state["clip"]`) and report
    `clip_indicator`; the server sums the indicators and calls `update`, which adds
    N(0, count_std²) to the count, forms b̄ = noisy count / expected clients and sets
    C ← C · exp(−learning_rate · (b̄ − target_quantile)).
    """

    target_quantile: float
    initial_clip: float
    learning_rate: float
    count_std: float
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 0 < self.target_quantile < 1:
            raise BadInput("target_quantile", self.target_quantile, "a fraction in (0, 1)")
        _positive("initial_clip", self.initial_clip)
        _positive("learning_rate", self.learning_rate)
        _non_negative("count_std", self.count_std)

    def init(self) -> State:
        return {"clip": float(self.initial_clip), "seed": self.seed, "step": 0}

    def update(self, indicator_sum: float, expected_clients: float, state: State) -> State:
        expected_clients = _positive("expected_clients", expected_clients)
        noisy = float(indicator_sum)
        if self.count_std > 0:
            noisy += self.count_std * float(
                rng_for(state["seed"], state["step"], _COUNT_STREAM).standard_normal()
            )
        fraction = noisy / expected_clients
        clip_norm = state["clip"] * math.exp(
            -self.learning_rate * (fraction - self.target_quantile)
        )
        return {**state, "clip": clip_norm, "step": state["step"] + 1}


def update_noise_multiplier(noise_multiplier: float, count_std: float) -> float:
    """z_Δ for the updates so updates plus clip counts cost as much as one Gaussian with z.

    Andrew et al. (2021, §3.1): z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2); the count has sensitivity ½
    once indicators are centred, so σ_b acts as noise multiplier 2σ_b.
    """
    z = _positive("noise_multiplier", noise_multiplier)
    count_std = _positive("count_std", count_std)
    if 2 * count_std <= z:
        raise BadInput(
            "count_std",
            count_std,
            f"> noise_multiplier / 2 = {z / 2:g} (else the count alone spends the whole budget)",
        )
    return (z**-2 - (2 * count_std) ** -2) ** -0.5
