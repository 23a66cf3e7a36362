"""Privacy accounting for Poisson-subsampled Gaussian steps, on Google's dp_accounting.

Each step is `PoissonSampledDpEvent(q, GaussianDpEvent(σ))` (the subsampled Gaussian of
Abadi et al., CCS 2016, "Deep Learning with Differential Privacy"); runs of identical
steps are `SelfComposedDpEvent`s and the whole history one `ComposedDpEvent`. ε(δ) comes
from Rényi DP (Mironov, CSF 2017; `dp_accounting.rdp.RdpAccountant`) or privacy loss
distributions (Koskela et al. 2020, Doroshenko et al. 2022; `dp_accounting.pld.
PLDAccountant`). The state is the list of (σ, q, count) runs, so a checkpoint stores
numbers and ε is recomputed on load. Privacy arguments are keyword-only, as in Opacus.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import dp_accounting
import numpy as np
from dp_accounting.pld import privacy_loss_distribution as pld_lib

from fedmeta.errors import BadInput, FedmetaError

Kind = Literal["rdp", "pld"]
KINDS: tuple[Kind, ...] = ("rdp", "pld")
_PLD_INTERVAL = 1e-4  # dp_accounting.pld.PLDAccountant's default value discretization
# What the accountants can do. RDP adds one curve per (σ, q) times its count, so any count
# works; 2^53 keeps the count exact as a float. A composed PLD has a bin per 1e-4 of
# privacy loss: 10^7 steps at σ=1, q=0.01 take 10 s and 0.8 GB (2 cores), and its size
# follows ε, so PLD is refused where RDP already puts ε above MAX_PLD_EPSILON (σ=0.5, q=1:
# 10^3 steps, ε≈2300, 0.9 GB; 10^5 steps, 8.6 GB).
MAX_STEPS = 2**53
MAX_PLD_STEPS = 10**7
MAX_PLD_EPSILON = 1000.0


@dataclass(frozen=True)
class Steps:
    """`count` identical steps of the Gaussian mechanism with noise multiplier σ at rate q."""

    noise_multiplier: float
    sample_rate: float
    count: int

    def __post_init__(self) -> None:
        if not (self.noise_multiplier > 0 and math.isfinite(self.noise_multiplier)):
            raise BadInput("noise_multiplier", self.noise_multiplier, "σ > 0 (finite)")
        if not 0 < self.sample_rate <= 1:
            raise BadInput("sample_rate", self.sample_rate, "a rate q in (0, 1]")
        if not (isinstance(self.count, int) and 1 <= self.count <= MAX_STEPS):
            raise BadInput("steps", self.count, f"an integer in 1..{MAX_STEPS:,} (2^53)")


def _event(sigma: float, q: float, count: int) -> dp_accounting.DpEvent:
    """Unchecked, so calibration may probe σ = 0 (where ε is infinite)."""
    step = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    return dp_accounting.SelfComposedDpEvent(step, count)


def same_sample_noise_multiplier(noise_multiplier: float, evaluations: int) -> float:
    """σ/√k: the one Gaussian mechanism equal to k Gaussians with multiplier σ run on the
    same sample (McMahan et al. 2018, arXiv:1812.06210, §3), e.g. the inner and outer
    gradients of one example-level DP meta-update; account a step as
    `PoissonSampledDpEvent(q, GaussianDpEvent(σ/√k))`."""
    if not (isinstance(evaluations, int) and evaluations >= 1):
        raise BadInput("evaluations", evaluations, "an integer k >= 1")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise BadInput("noise_multiplier", noise_multiplier, "a finite σ >= 0")
    return noise_multiplier / math.sqrt(evaluations)


def _check_kind(kind: str) -> Kind:
    if kind not in KINDS:
        raise BadInput("accountant", kind, "one of " + ", ".join(KINDS))
    return kind  # type: ignore[return-value]


def _check_delta(delta: float) -> float:
    if not 0 < delta < 1:
        raise BadInput("delta", delta, "a probability δ in (0, 1)")
    return float(delta)


def _check_epsilon(epsilon: float) -> float:
    if not (epsilon > 0 and math.isfinite(epsilon)):
        raise BadInput("target_epsilon", epsilon, "ε > 0 (finite)")
    return float(epsilon)


def _fresh(kind: Kind) -> dp_accounting.PrivacyAccountant:
    return dp_accounting.rdp.RdpAccountant() if kind == "rdp" else dp_accounting.pld.PLDAccountant()


@functools.lru_cache(maxsize=256)
def epsilon_of(history: tuple[Steps, ...], delta: float, kind: Kind = "rdp") -> float:
    """ε at δ of running `history` in order (0 for an empty history)."""
    kind, delta = _check_kind(kind), _check_delta(delta)
    if not history:
        return 0.0
    return _pld_epsilon(history, delta) if kind == "pld" else _rdp_epsilon(history, delta)


@functools.lru_cache(maxsize=64)
def _rdp_step(sigma: float, q: float) -> np.ndarray:
    """RDP at `RdpAccountant`'s default orders of one Poisson-subsampled Gaussian step;
    computing it is most of the cost of a run's per-round ε, so once per (σ, q)."""
    return dp_accounting.rdp.RdpAccountant().compose(_event(sigma, q, 1)).rdp


def _rdp_epsilon(history: tuple[Steps, ...], delta: float) -> float:
    """`RdpAccountant`'s ε for the history: RDP adds up over composition (Mironov 2017)."""
    total = sum(s.count * _rdp_step(s.noise_multiplier, s.sample_rate) for s in history)
    orders = dp_accounting.rdp.rdp_privacy_accountant.DEFAULT_RDP_ORDERS
    return float(dp_accounting.rdp.rdp_privacy_accountant.compute_epsilon(orders, total, delta)[0])


@functools.lru_cache(maxsize=64)
def _pld_step(sigma: float, q: float) -> pld_lib.PrivacyLossDistribution:
    """The PLD of one Poisson-subsampled Gaussian step, built as `PLDAccountant` builds it
    (default discretization 1e-4, add-or-remove-one); building it is most of the cost of a
    run's per-round ε, so it is built once per (σ, q)."""
    return pld_lib.from_gaussian_mechanism(
        standard_deviation=sigma, sampling_prob=q, value_discretization_interval=_PLD_INTERVAL
    )


def _pld_epsilon(history: tuple[Steps, ...], delta: float) -> float:
    """`PLDAccountant`'s ε for the history, composing the cached step PLDs."""
    pld = pld_lib.identity(_PLD_INTERVAL)
    for s in history:
        pld = pld.compose(_pld_step(s.noise_multiplier, s.sample_rate).self_compose(s.count))
    return float(pld.get_epsilon_for_delta(delta))


def check_pld_affordable(steps: Steps, delta: float) -> None:
    """Refuse, before allocating anything, a PLD computation of `steps` too large to hold:
    more than MAX_PLD_STEPS steps, or more steps than keep RDP's ε at δ within
    MAX_PLD_EPSILON (the composed distribution's size follows ε)."""
    delta = _check_delta(delta)
    sigma, q = steps.noise_multiplier, steps.sample_rate
    accepted = (f"an integer in 1..{{:,}} for PLD accounting at σ={sigma:g}, q={q:g} ({{}}); "
                f"RDP accounting takes up to {MAX_STEPS:,}")
    if steps.count > MAX_PLD_STEPS:
        raise BadInput("steps", steps.count, accepted.format(MAX_PLD_STEPS, "its distribution grows with the steps"))

    def rdp(count: int) -> float:
        return _rdp_epsilon((Steps(sigma, q, count),), delta)

    if rdp(steps.count) <= MAX_PLD_EPSILON:
        return
    low, high = 0, steps.count  # rdp(low) <= limit < rdp(high); ε grows with the count
    while high - low > 1:
        mid = (low + high) // 2
        low, high = (mid, high) if rdp(mid) <= MAX_PLD_EPSILON else (low, mid)
    why = f"beyond, RDP already gives ε > {MAX_PLD_EPSILON:g} and the distribution would take gigabytes"
    if low == 0:
        raise BadInput("noise_multiplier", sigma,
                       f"a larger σ for PLD accounting at q={q:g}: one step already has ε > {MAX_PLD_EPSILON:g} by RDP; "
                       "use RDP accounting")
    raise BadInput("steps", steps.count, accepted.format(low, why))


def _appended(history: tuple[Steps, ...], steps: Steps) -> tuple[Steps, ...]:
    """`history` followed by `steps`, merging with the last run when σ and q match."""
    if history:
        last = history[-1]
        if (last.noise_multiplier, last.sample_rate) == (steps.noise_multiplier, steps.sample_rate):
            merged = Steps(last.noise_multiplier, last.sample_rate, last.count + steps.count)
            return history[:-1] + (merged,)
    return history + (steps,)


class Accountant:
    """Running ε of a training run; `kind` is "rdp" or "pld"."""

    def __init__(self, kind: Kind = "rdp") -> None:
        self.kind = _check_kind(kind)
        self.history: tuple[Steps, ...] = ()

    def step(self, *, noise_multiplier: float, sample_rate: float, steps: int = 1) -> None:
        """Record `steps` Poisson-subsampled Gaussian steps (σ = noise_multiplier, q = sample_rate)."""
        self.history = _appended(self.history, Steps(noise_multiplier, sample_rate, steps))

    def epsilon(self, delta: float) -> float:
        """ε spent so far at δ."""
        return epsilon_of(self.history, delta, self.kind)

    def would_exceed(
        self,
        *,
        target_epsilon: float,
        delta: float,
        noise_multiplier: float,
        sample_rate: float,
        steps: int = 1,
    ) -> bool:
        """True if taking the given steps next would push ε at δ above target_epsilon."""
        target_epsilon = _check_epsilon(target_epsilon)
        nxt = _appended(self.history, Steps(noise_multiplier, sample_rate, steps))
        return epsilon_of(nxt, delta, self.kind) > target_epsilon

    def state_dict(self) -> dict:
        """Plain numbers for a checkpoint: the kind and the (σ, q, count) runs."""
        return {
            "kind": self.kind,
            "history": [[s.noise_multiplier, s.sample_rate, s.count] for s in self.history],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> Accountant:
        acc = cls(state["kind"])
        for sigma, q, count in state["history"]:
            acc.step(noise_multiplier=float(sigma), sample_rate=float(q), steps=int(count))
        return acc


def noise_multiplier_for(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: Kind = "rdp",
    tol: float = 1e-4,
) -> float:
    """Smallest σ (within tol) whose `steps` steps at rate q spend at most target ε at δ.

    Uses `dp_accounting.calibrate_dp_mechanism` (bracketing, then Brent's method), which
    returns a σ on the feasible side of the target.
    """
    target_epsilon, delta = _check_epsilon(target_epsilon), _check_delta(delta)
    kind = _check_kind(accountant)
    Steps(1.0, sample_rate, steps)  # validates q and steps
    if kind == "pld":  # calibration probes σ down to where ε meets the target
        if steps > MAX_PLD_STEPS:
            raise BadInput("steps", steps, f"an integer in 1..{MAX_PLD_STEPS:,} for PLD accounting "
                                           f"(its distribution grows with the steps); RDP accounting takes up to {MAX_STEPS:,}")
        if target_epsilon > MAX_PLD_EPSILON:
            raise BadInput("target_epsilon", target_epsilon, f"ε <= {MAX_PLD_EPSILON:g} for PLD accounting "
                                                            "(its distribution grows with ε); use RDP accounting")
    try:
        return float(
            dp_accounting.calibrate_dp_mechanism(
                lambda: _fresh(kind),
                lambda sigma: _event(sigma, sample_rate, steps),
                target_epsilon,
                delta,
                tol=tol,
            )
        )
    except (ValueError, dp_accounting.mechanism_calibration.NoBracketIntervalFoundError) as err:
        raise FedmetaError(
            f"no noise multiplier σ found for target ε={target_epsilon:g} at δ={delta:g} "
            f"(q={sample_rate:g}, {steps} steps, {kind}): {err}"
        ) from err


def max_steps_for(
    *,
    target_epsilon: float,
    delta: float,
    noise_multiplier: float,
    sample_rate: float,
    accountant: Kind = "rdp",
) -> int:
    """Largest number of steps with σ at rate q whose ε at δ stays at most target ε."""
    target_epsilon, delta = _check_epsilon(target_epsilon), _check_delta(delta)
    kind = _check_kind(accountant)
    Steps(noise_multiplier, sample_rate, 1)  # validates σ and q

    def eps(count: int) -> float:
        return epsilon_of((Steps(noise_multiplier, sample_rate, count),), delta, kind)

    if eps(1) > target_epsilon:
        raise BadInput(
            "target_epsilon",
            target_epsilon,
            f"at least ε={eps(1):.4g}, the cost of one step with σ={noise_multiplier:g}, "
            f"q={sample_rate:g} at δ={delta:g}",
        )
    count = int(
        dp_accounting.calibrate_dp_mechanism(
            lambda: _fresh(kind),
            lambda c: _event(noise_multiplier, sample_rate, max(int(c), 1)),
            target_epsilon,
            delta,
            bracket_interval=dp_accounting.LowerEndpointAndGuess(1, 2),
            discrete=True,
        )
    )
    # Brent's method lands within one step of the boundary; settle it exactly.
    count = max(count, 1)
    while count > 1 and eps(count) > target_epsilon:
        count -= 1
    while eps(count + 1) <= target_epsilon:
        count += 1
    return count
