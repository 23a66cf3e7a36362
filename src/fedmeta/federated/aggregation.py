"""A round's aggregation: from the clients' accepted updates to the one Δ the strategy applies.

Cross-cutting features wrap this step, never the strategies:

- client-level DP, DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018): each client
  clips Δ to C; the server adds N(0, z²C²) to the sum (`central`), or each of the m
  expected clients adds N(0, z²C²/m) (`local`); the sum is divided by the fixed expected
  count m = q·N, never the realised one. C is fixed, or tracks the γ-quantile of the update
  norms by adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy, NeurIPS 2021): clients
  also report b = [‖Δ‖ ≤ C], the server updates C ← C·exp(−η(b̄ − γ)) from a noisy count
  (σ_b), and the updates get z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so both releases together cost
  one Gaussian mechanism with multiplier z (their §3.1);
- the summing backend: in the clear, through secure aggregation (`secure.py`), where the
  server learns the sums only, or as CKKS ciphertexts the server adds without a key and a
  client decrypts (`encrypted.py`; keys dealt once per run by `distribute_keys`);
- without client-level DP or secure sums, a Byzantine-robust rule (`robust/`) can replace
  the weighted mean.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from fedmeta.config import Config
from fedmeta.federated.encrypted import distribute_keys, encrypted_weighted_sum
from fedmeta.federated.registry import build
from fedmeta.federated.robust import ROBUST
from fedmeta.federated.secure import secure_weighted_sum, weight_scale
from fedmeta.meta.base import Params
from fedmeta.privacy.noise import gaussian_like
from fedmeta.privacy.stages import (
    AdaptiveClip,
    clip_indicator,
    clip_updates,
    dp_aggregate,
    update_noise_multiplier,
)

UNCLIPPED = "__unclipped__"  # adaptive clipping's count, summed alongside the update


class Aggregation:
    """The server's summing step and the clients' matching DP stage, for one run."""

    def __init__(self, cfg: Config, expected_clients: float):
        self.cfg, self.m = cfg, expected_clients
        dp = cfg.privacy
        self.adaptive: AdaptiveClip | None = None
        self.clip_state: dict[str, Any] | None = None
        if dp.dp != "off" and dp.clipping == "adaptive":
            noisy = dp.noise_multiplier > 0
            self.count_std = cfg.clip_count_stddev if noisy else 0.0
            self.adaptive = AdaptiveClip(
                dp.target_quantile, dp.clip_norm, dp.clip_learning_rate,
                self.count_std if dp.dp == "central" else 0.0,  # local: the clients add it
                seed=dp.noise_seed,
            )
            self.clip_state = self.adaptive.init()
        self.stats: Any = None  # the last secure or encrypted sum's costs
        self.keys = distribute_keys() if dp.secure_aggregation == "ckks" else None
        robust = cfg.federated.robust
        self.robust = build(ROBUST, robust.rule, robust)

    # -- DP parameters of the current round ------------------------------------------------
    @property
    def clip_norm(self) -> float:
        """C of this round: fixed, or adaptive clipping's current estimate."""
        return self.cfg.privacy.clip_norm if self.clip_state is None else self.clip_state["clip"]

    @property
    def update_noise_multiplier(self) -> float:
        z = self.cfg.privacy.noise_multiplier
        return update_noise_multiplier(z, self.count_std) if self.adaptive is not None and z > 0 else z

    # -- client side ---------------------------------------------------------------------------
    def privatize(self, delta: Params, rng: np.random.Generator) -> tuple[Params, float]:
        """Clip Δ to C (and in the local variant add the client's noise share); also the
        client's adaptive-clipping report b (with its count-noise share when local)."""
        dp = self.cfg.privacy
        if dp.dp not in ("central", "local"):  # example-level DP privatizes inside the client
            return delta, 0.0
        report = float(clip_indicator(delta, self.clip_norm))
        clipped = clip_updates(delta, self.clip_norm)
        if dp.dp == "central" or dp.noise_multiplier == 0:
            return clipped, report
        share = math.sqrt(self.m)
        noise = gaussian_like(clipped, self.update_noise_multiplier * self.clip_norm / share, rng)
        if self.adaptive is not None:
            report += self.count_std / share * float(rng.standard_normal())
        return {k: (v + noise[k]).to(v.dtype) for k, v in clipped.items()}, report

    # -- server side ---------------------------------------------------------------------------
    def __call__(self, updates: list[Params], weights: list[float], reports: list[float],
                 rng: np.random.Generator) -> Params:
        """Δ for the strategy from the accepted updates (each already privatized)."""
        dp = self.cfg.privacy
        if dp.secure_aggregation != "off":
            rows = [self.secure_row(u, b) for u, b in zip(updates, reports, strict=True)]
            total, weight = self._secure_sum(rows, self.secure_weights(weights), self.secure_clip)
            return self.from_secure_sum(total, weight, rng)
        if dp.dp not in ("central", "local"):  # no client-level DP: the example-weighted mean
            return self.robust(updates, weights)
        central_z = self.update_noise_multiplier if dp.dp == "central" else 0.0
        delta = dp_aggregate(updates, max_norm=self.clip_norm, noise_multiplier=central_z,
                             expected_weight=self.m, rng=rng)
        self._adapt_clip(sum(reports))
        return delta

    # -- secure sums: what each client masks, and what the server makes of Σ w·row ------------
    @property
    def client_dp(self) -> bool:
        return self.cfg.privacy.dp in ("central", "local")

    @property
    def secure_clip(self) -> float:
        """The fixed-point range of each masked coordinate: `secagg_clip` for weighted FedAvg;
        under DP-FedAvg C, with room for a noisy adaptive-clipping report."""
        if not self.client_dp:
            return self.cfg.privacy.secagg_clip
        if self.adaptive is None:
            return self.clip_norm
        return max(self.clip_norm, 1.0 + 6 * self.count_std / math.sqrt(self.m))

    def secure_weights(self, weights: list[float]) -> list[float]:
        """The weight each client's row carries: example counts scaled into (0, 1]
        (weighted FedAvg), or unit weights (DP-FedAvg divides by the expected count)."""
        if not self.client_dp:
            scale = weight_scale(weights)
            return [w / scale for w in weights]
        return [1.0] * len(weights)

    def secure_row(self, update: Params, report: float) -> Params:
        """A client's summand: its update, and adaptive clipping's count as one more coordinate."""
        if self.adaptive is None or not self.client_dp:
            return update
        return {**update, UNCLIPPED: torch.tensor([report], dtype=torch.float64)}

    def from_secure_sum(self, total: Params, weight: float, rng: np.random.Generator) -> Params:
        """Δ for the strategy from (Σ w·row, Σ w), however the sum was computed: the weighted
        mean, or DP-FedAvg's central noise, adaptive-clipping step and division by m."""
        if not self.client_dp:
            return {k: v / weight for k, v in total.items()}
        total = dict(total)
        count = float(total.pop(UNCLIPPED, 0.0))
        central_z = self.update_noise_multiplier if self.cfg.privacy.dp == "central" else 0.0
        if central_z > 0:
            noise = gaussian_like(total, central_z * self.clip_norm, rng)
            total = {k: v + noise[k] for k, v in total.items()}
        self._adapt_clip(count)
        return {k: v / self.m for k, v in total.items()}

    def _secure_sum(self, updates: list[Params], weights: list[float], clip: float) -> tuple[Params, float]:
        """(Σ w·Δ, Σ w) by masked sums (coordinates clipped to ±clip) or CKKS ciphertexts."""
        if self.keys is not None:
            total, weight, self.stats = encrypted_weighted_sum(updates, weights, self.keys.clients)
        else:
            total, weight, self.stats = secure_weighted_sum(
                updates, weights, clip=clip, neighbourhood=self.cfg.privacy.secure_aggregation)
        return total, weight

    def _adapt_clip(self, unclipped: float) -> None:
        if self.adaptive is not None:
            self.clip_state = self.adaptive.update(unclipped, self.m, self.clip_state)

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"clip_state": self.clip_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_state = state["clip_state"]
