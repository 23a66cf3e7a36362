"""Client-level DP, DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018): both halves of
the mechanism, written once.

Each client clips Δ to C; the server adds N(0, z²C²) to the sum (`central`), or each of
the m expected clients adds N(0, z²C²/m) (`local`); the sum is divided by the fixed
expected count m = q·N, never the realised one. C is fixed, or tracks the γ-quantile of
the update norms by adaptive clipping (Andrew et al., NeurIPS 2021): clients also report
b = [‖Δ‖ ≤ C], the server updates C ← C·exp(−η(b̄ − γ)) from a noisy count (σ_b), and the
updates get z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2) so both releases together cost one Gaussian
mechanism with multiplier z (their §3.1).

The client half is `privatize` (the client step `Privatize` runs it); the server half is
`finish`, on the sum however it was computed (in the clear, masked or encrypted). The DP
event the accountant counts comes from here, the stage that adds the noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from fedmeta.config import Config
from fedmeta.params import Params, clip, global_norm
from fedmeta.privacy.adaptive_clip import AdaptiveClip, update_noise_multiplier
from fedmeta.privacy.noise import gaussian_like

UNCLIPPED = "__unclipped__"  # adaptive clipping's count, summed alongside the update


@dataclass
class ClientLevelDP:
    placement: str  # "central" or "local"
    noise_multiplier: float  # z: what the round costs
    initial_clip: float
    expected_clients: float  # m = q·N
    sample_rate: float  # q
    count_std: float = 0.0  # σ_b of adaptive clipping's count (0: no noise on it)
    adaptive: AdaptiveClip | None = None
    clip_state: dict[str, Any] | None = field(default=None)

    @classmethod
    def from_config(cls, cfg: Config, sample_rate: float, expected_clients: float) -> ClientLevelDP:
        dp = cfg.privacy
        out = cls(dp.dp, dp.noise_multiplier, dp.clip_norm, expected_clients, sample_rate)
        if dp.clipping == "adaptive":
            out.count_std = cfg.clip_count_stddev if dp.noise_multiplier > 0 else 0.0
            out.adaptive = AdaptiveClip(dp.target_quantile, dp.clip_norm, dp.clip_learning_rate,
                                        out.count_std if dp.dp == "central" else 0.0,  # local: the clients add it
                                        seed=dp.noise_seed)
            out.clip_state = out.adaptive.init()
        return out

    @property
    def clip_norm(self) -> float:
        """C of this round: fixed, or adaptive clipping's current estimate."""
        return self.initial_clip if self.clip_state is None else self.clip_state["clip"]

    @property
    def update_noise_multiplier(self) -> float:
        """z_Δ: z itself, or less under adaptive clipping (the count spends the rest)."""
        z = self.noise_multiplier
        return update_noise_multiplier(z, self.count_std) if self.adaptive is not None and z > 0 else z

    def event(self) -> dict[str, Any] | None:
        """One round's cost as `Accountant.step` keywords: one Poisson-sampled Gaussian at
        the client rate (None: no noise, nothing to count)."""
        if self.noise_multiplier == 0:
            return None
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate, "steps": 1}

    # -- the client's half -------------------------------------------------------------------
    def privatize(self, delta: Params, clip_norm: float, rng: np.random.Generator) -> tuple[Params, float]:
        """Clip Δ to C (in the local placement also add the client's noise share); the
        client's adaptive-clipping report b (with its count-noise share when local)."""
        report = float(global_norm(delta) <= clip_norm)
        clipped = clip(delta, clip_norm)
        if self.placement == "central" or self.noise_multiplier == 0:
            return clipped, report
        share = math.sqrt(self.expected_clients)
        noise = gaussian_like(clipped, self.update_noise_multiplier * clip_norm / share, rng)
        if self.adaptive is not None:
            report += self.count_std / share * float(rng.standard_normal())
        return {k: (v + noise[k]).to(v.dtype) for k, v in clipped.items()}, report

    # -- the server's half --------------------------------------------------------------------
    def secure_clip(self) -> float:
        """The fixed-point range of each masked coordinate: C, with room for a noisy
        adaptive-clipping report and, under local noise, for six standard deviations of a
        client's noise share (coordinates past the range would be clipped, cutting noise
        the accountant counts)."""
        share = math.sqrt(self.expected_clients)
        noise = 6 * self.update_noise_multiplier * self.clip_norm / share if self.placement == "local" else 0.0
        if self.adaptive is None:
            return self.clip_norm + noise
        return max(self.clip_norm + noise, 1.0 + 6 * self.count_std / share)

    def row(self, update: Params, report: float) -> Params:
        """A client's summand for a secure sum: its update, and the count as one more coordinate."""
        if self.adaptive is None:
            return update
        return {**update, UNCLIPPED: torch.tensor([report], dtype=torch.float64)}

    def finish(self, total: Params, unclipped: float, rng: np.random.Generator) -> Params:
        """Δ for the strategy from Σ clipped Δ: central noise N(0, z_Δ²C²), adaptive
        clipping's step, division by m."""
        z = self.update_noise_multiplier if self.placement == "central" else 0.0
        if z > 0:
            noise = gaussian_like(total, z * self.clip_norm, rng)
            total = {k: v + noise[k] for k, v in total.items()}
        if self.adaptive is not None:
            self.clip_state = self.adaptive.update(unclipped, self.expected_clients, self.clip_state)
        return {k: v / self.expected_clients for k, v in total.items()}
