"""Privacy stages for model updates, as pure (init, update) pairs composed with `chain`.

A stage follows optax's GradientTransformation shape: `init(params_like) -> state` and
`update(updates, state) -> (updates, state)`. Updates are dicts name -> tensor (a client's
delta Δ = θ_local − θ, or on the server the sum over clients). Random seeds and step
counters live in the state, which holds only ints, floats and None, so a step can be
checkpointed and replayed.

Implements DP-FedAvg (McMahan, Ramage, Talwar & Zhang, ICLR 2018, "Learning
Differentially Private Recurrent Language Models") in its central placement (clients clip
to C, the server adds N(0, z²C²) to the sum) and its distributed placement (each of n
clients adds N(0, z²C²/n), so the sum carries variance z²C²), unbiased stochastic
quantization, and quantile-based adaptive clipping (Andrew, Thakkar, McMahan & Ramaswamy,
NeurIPS 2021, "Differentially Private Learning with Adaptive Clipping").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmeta.errors import BadInput
from fedmeta.privacy.noise import Updates, gaussian_like, rng_for, uniform_like

State = Any  # ints, floats, None, and dicts/tuples of them

# Seeded mode: each kind of stage draws from its own stream of (seed, step, stream), so a
# noise stage and a quantizer given the same seed still get independent randomness.
_NOISE_STREAM, _QUANTIZE_STREAM, _COUNT_STREAM = 0, 1, 2


@dataclass(frozen=True)
class Stage:
    """A pure transformation of updates; its state is threaded through by the caller."""

    init: Callable[[Updates], State]
    update: Callable[[Updates, State], tuple[Updates, State]]


def chain(*stages: Stage) -> Stage:
    """Apply `stages` left to right; the state is the tuple of their states."""

    def init(params_like: Updates) -> State:
        return tuple(s.init(params_like) for s in stages)

    def update(updates: Updates, state: State) -> tuple[Updates, State]:
        new_states = []
        for stage, sub in zip(stages, state, strict=True):
            updates, sub = stage.update(updates, sub)
            new_states.append(sub)
        return updates, tuple(new_states)

    return Stage(init, update)


def _positive(field: str, value: float, *, allow_inf: bool = False) -> float:
    if not (value > 0 and (allow_inf or math.isfinite(value))):
        raise BadInput(field, value, "a positive number" + (" or inf" if allow_inf else ""))
    return float(value)


def _non_negative(field: str, value: float) -> float:
    if not (value >= 0 and math.isfinite(value)):
        raise BadInput(field, value, "a finite number >= 0")
    return float(value)


# --- clipping -------------------------------------------------------------------------


def global_norm(updates: Updates) -> float:
    """L2 norm of all tensors of an update taken together."""
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in updates.values()))


def clip_updates(updates: Updates, max_norm: float) -> Updates:
    """Scale `updates` by min(1, max_norm / ‖updates‖₂); unchanged when already within C."""
    norm = global_norm(updates)
    if norm <= max_norm:
        return dict(updates)
    return {name: t * (max_norm / norm) for name, t in updates.items()}


def clip(max_norm: float) -> Stage:
    """Clip the global L2 norm of an update to `max_norm` (inf: identity)."""
    max_norm = _positive("max_norm", max_norm, allow_inf=True)
    return Stage(lambda _: (), lambda u, s: (clip_updates(u, max_norm), s))


def clip_indicator(updates: Updates, max_norm: float) -> int:
    """Client side of adaptive clipping: 1 if ‖updates‖₂ ≤ max_norm, else 0."""
    return int(global_norm(updates) <= max_norm)


# --- noise ----------------------------------------------------------------------------


def _seeded_state(seed: int | None) -> Callable[[Updates], State]:
    return lambda _: {"seed": seed, "step": 0}


def gaussian_noise(std: float, seed: int | None = None) -> Stage:
    """Add N(0, std²) to every coordinate.

    `seed=None` (default) draws each step's noise from fresh OS entropy; an int makes the
    noise reproducible from (seed, step) and warns that it is not secure. Clients adding
    seeded noise must each use a different seed, or their noise is identical.
    """
    std = _non_negative("std", std)

    def update(updates: Updates, state: State) -> tuple[Updates, State]:
        if std > 0:
            noise = gaussian_like(
                updates, std, rng_for(state["seed"], state["step"], _NOISE_STREAM)
            )
            updates = {name: t + noise[name] for name, t in updates.items()}
        return updates, {**state, "step": state["step"] + 1}

    return Stage(_seeded_state(seed), update)


# --- quantization ---------------------------------------------------------------------


def quantize(bits: int, bound: float | None = None, seed: int | None = None) -> Stage:
    """Unbiased stochastic rounding onto 2**bits evenly spaced levels.

    The grid spans [-bound, bound] (values outside are clamped first, so clip to
    C ≤ bound beforehand to stay unbiased), or per tensor [-max|x|, max|x|] when bound is
    None. Each value goes to one of its two neighbouring levels with probabilities that
    make the expectation equal the value. Output is the dequantized float tensor.
    """
    if not (isinstance(bits, int) and 1 <= bits <= 24):
        raise BadInput("bits", bits, "an integer in 1..24")
    if bound is not None:
        bound = _positive("bound", bound)
    intervals = 2**bits - 1

    def update(updates: Updates, state: State) -> tuple[Updates, State]:
        u = uniform_like(updates, rng_for(state["seed"], state["step"], _QUANTIZE_STREAM))
        out = {}
        for name, t in updates.items():
            x = t.double()
            half = bound if bound is not None else float(x.abs().max()) if x.numel() else 0.0
            if half == 0.0:
                out[name] = t.clone()
                continue
            step = 2 * half / intervals
            y = (x.clamp(-half, half) + half) / step  # in [0, intervals]
            low = y.floor()
            levels = low + (u[name] < (y - low)).double()
            out[name] = (levels * step - half).to(t.dtype)
        return out, {**state, "step": state["step"] + 1}

    return Stage(_seeded_state(seed), update)


# --- DP-FedAvg placements -------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """Where DP-FedAvg's noise goes: `client` runs on each Δ, `server` on the sum of Δs."""

    client: Stage
    server: Stage


def central_dp(max_norm: float, noise_multiplier: float, seed: int | None = None) -> Placement:
    """Central DP: clients clip to C; the trusted server adds N(0, z²C²) to the sum."""
    max_norm = _positive("max_norm", max_norm)
    z = _non_negative("noise_multiplier", noise_multiplier)
    return Placement(client=clip(max_norm), server=gaussian_noise(z * max_norm, seed))


def distributed_dp(
    max_norm: float, noise_multiplier: float, num_clients: int, seed: int | None = None
) -> Placement:
    """Distributed DP: each of n clients clips to C and adds N(0, z²C²/n).

    The n independent shares sum to variance n · z²C²/n = z²C², the central mechanism's,
    provided at least n clients report (dropouts leave the sum under-noised) and the server
    only sees the sum (secure aggregation). Seeded mode needs a different seed per client.
    """
    max_norm = _positive("max_norm", max_norm)
    z = _non_negative("noise_multiplier", noise_multiplier)
    if not (isinstance(num_clients, int) and num_clients >= 1):
        raise BadInput("num_clients", num_clients, "an integer >= 1")
    share = gaussian_noise(z * max_norm / math.sqrt(num_clients), seed)
    return Placement(client=chain(clip(max_norm), share), server=chain())


def weighted_sum(updates: Sequence[Updates], weights: Sequence[float] | None = None) -> Updates:
    """Σ_k w_k Δ_k over clients (w_k = 1 when weights is None)."""
    if not updates:
        raise BadInput("updates", [], "at least one client update")
    w = (
        torch.ones(len(updates), dtype=torch.float64)
        if weights is None
        else torch.as_tensor(weights, dtype=torch.float64)
    )  # (clients,)
    if w.shape != (len(updates),):
        raise BadInput("weights", tuple(w.shape), f"shape ({len(updates)},): one weight per update")
    out = {}
    for name, t in updates[0].items():
        stacked = torch.stack([u[name].double() for u in updates])  # (clients, *shape)
        out[name] = torch.tensordot(w, stacked, dims=1).to(t.dtype)
    return out


def dp_aggregate(
    updates: Sequence[Updates],
    weights: Sequence[float] | None = None,
    *,
    max_norm: float,
    noise_multiplier: float,
    expected_weight: float,
    rng: np.random.Generator | None = None,
) -> Updates:
    """DP-FedAvg's server step: clip each Δ_k to C, Σ w_k Δ_k + N(0, z²C²), ÷ expected weight.

    Weights are in [0, 1] (McMahan et al. cap w_k = min(n_k / ŵ, 1)) so one client moves the
    sum by at most C. The divisor is fixed — the expected total weight q·W, or the expected
    number of clients for unit weights — never the realised one, which would leak who took
    part. `rng=None` draws fresh secure noise.
    """
    max_norm = _positive("max_norm", max_norm, allow_inf=True)
    z = _non_negative("noise_multiplier", noise_multiplier)
    expected_weight = _positive("expected_weight", expected_weight)
    if weights is not None and not all(0 <= w <= 1 for w in weights):
        raise BadInput("weights", list(weights), "client weights in [0, 1]")
    if z > 0 and math.isinf(max_norm):
        raise BadInput("max_norm", max_norm, "a finite clip norm when noise_multiplier > 0")
    total = weighted_sum([clip_updates(u, max_norm) for u in updates], weights)
    if z > 0:
        noise = gaussian_like(total, z * max_norm, rng if rng is not None else rng_for(None))
        total = {name: t + noise[name] for name, t in total.items()}
    return {name: t / expected_weight for name, t in total.items()}


# --- adaptive clipping ----------------------------------------------------------------


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
