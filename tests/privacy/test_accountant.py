"""The accountant against dp_accounting called directly on independently built events."""

from __future__ import annotations

import json

import dp_accounting as dpa
import pytest

from fedmeta.errors import BadInput
from fedmeta.privacy.accountant import (
    Accountant,
    max_steps_for,
    noise_multiplier_for,
    same_sample_noise_multiplier,
)
from fedmeta.privacy.adaptive_clip import update_noise_multiplier

DELTA = 1e-5
FRESH = {"rdp": dpa.rdp.RdpAccountant, "pld": dpa.pld.PLDAccountant}


def _reference(kind: str, schedule: list[tuple[float, float]]) -> float:
    """ε after composing one subsampled Gaussian event per (σ, q) in the schedule."""
    acc = FRESH[kind]()
    for sigma, q in schedule:
        acc.compose(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)))
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize("kind", ["rdp", "pld"])
def test_epsilon_matches_dp_accounting(kind: str) -> None:
    schedule = [(1.1, 0.01)] * 2 + [(0.8, 0.05)] + [(1.1, 0.01)]
    acc = Accountant(kind)
    acc.step(noise_multiplier=1.1, sample_rate=0.01, steps=2)
    acc.step(noise_multiplier=0.8, sample_rate=0.05)
    acc.step(noise_multiplier=1.1, sample_rate=0.01)
    assert acc.epsilon(DELTA) == pytest.approx(_reference(kind, schedule), rel=1e-6)
    restored = Accountant.from_state_dict(json.loads(json.dumps(acc.state_dict())))
    assert restored.epsilon(DELTA) == acc.epsilon(DELTA)
    assert Accountant(kind).epsilon(DELTA) == 0.0


def test_budget_stop_allows_last_step_within_target() -> None:
    sigma, q = 1.0, 0.02
    event = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma))
    eps_25, eps_26 = (
        dpa.rdp.RdpAccountant().compose(event, t).get_epsilon(DELTA) for t in (25, 26)
    )
    target = (eps_25 + eps_26) / 2  # 25 steps fit, 26 do not
    acc = Accountant("rdp")
    taken = 0
    while not acc.would_exceed(
        target_epsilon=target, delta=DELTA, noise_multiplier=sigma, sample_rate=q
    ):
        acc.step(noise_multiplier=sigma, sample_rate=q)
        taken += 1
    assert taken == 25
    assert acc.epsilon(DELTA) == pytest.approx(eps_25, rel=1e-9)
    assert (
        max_steps_for(target_epsilon=target, delta=DELTA, noise_multiplier=sigma, sample_rate=q)
        == 25
    )


def test_budget_stop_at_exact_boundary_is_allowed() -> None:
    target = _reference("rdp", [(1.0, 0.02)] * 5)
    acc = Accountant("rdp")
    acc.step(noise_multiplier=1.0, sample_rate=0.02, steps=4)
    assert not acc.would_exceed(
        target_epsilon=target, delta=DELTA, noise_multiplier=1.0, sample_rate=0.02
    )
    assert acc.would_exceed(
        target_epsilon=target, delta=DELTA, noise_multiplier=1.0, sample_rate=0.02, steps=2
    )


def test_noise_multiplier_for_meets_target_tightly() -> None:
    q, steps, target = 0.02, 500, 2.0
    sigma = noise_multiplier_for(target_epsilon=target, delta=DELTA, sample_rate=q, steps=steps)
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    eps = dpa.rdp.RdpAccountant().compose(event).get_epsilon(DELTA)
    assert eps <= target
    assert eps >= 0.99 * target


def test_too_small_budget_names_epsilon_delta_sigma() -> None:
    with pytest.raises(BadInput) as err:
        max_steps_for(target_epsilon=0.01, delta=DELTA, noise_multiplier=0.5, sample_rate=0.5)
    message = str(err.value)
    assert "target_epsilon" in message and "σ=0.5" in message and "δ=1e-05" in message


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"noise_multiplier": 0.0, "sample_rate": 0.1}, "noise_multiplier"),
        ({"noise_multiplier": 1.0, "sample_rate": 1.5}, "sample_rate"),
        ({"noise_multiplier": 1.0, "sample_rate": 0.1, "steps": 0}, "steps"),
    ],
)
def test_bad_step_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(BadInput) as err:
        Accountant().step(**kwargs)
    assert err.value.field == field


def test_adaptive_clip_noise_split_costs_one_gaussian() -> None:
    # Andrew et al.: updates at z_Δ plus counts at σ_b (sensitivity ½) cost one Gaussian at z.
    z, count_std, q, steps = 1.0, 5.0, 0.05, 200
    z_updates = update_noise_multiplier(z, count_std)

    def composed(*sigmas: float) -> float:
        step = dpa.PoissonSampledDpEvent(
            q, dpa.ComposedDpEvent([dpa.GaussianDpEvent(s) for s in sigmas])
        )
        return (
            dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(step, steps)).get_epsilon(DELTA)
        )

    assert composed(z_updates, 2 * count_std) == pytest.approx(composed(z), rel=1e-6)


@pytest.mark.parametrize("kind, q", [("rdp", 0.02), ("pld", 1.0)])
def test_same_sample_gaussians_cost_one_gaussian(kind: str, q: float) -> None:
    # k Gaussians on one Poisson sample, T steps. RDP: dp-accounting's composed-subevent
    # path. PLD has no such path, so compare without subsampling, where it convolves the
    # k privacy loss distributions itself.
    sigma, k, steps = 1.5, 3, 30
    inner = dpa.ComposedDpEvent([dpa.GaussianDpEvent(sigma)] * k)
    event = dpa.PoissonSampledDpEvent(q, inner) if q < 1 else inner
    ref = FRESH[kind]().compose(dpa.SelfComposedDpEvent(event, steps)).get_epsilon(DELTA)
    acc = Accountant(kind)
    acc.step(noise_multiplier=same_sample_noise_multiplier(sigma, k), sample_rate=q, steps=steps)
    assert acc.epsilon(DELTA) == pytest.approx(ref, rel=1e-6)
    with pytest.raises(BadInput, match="evaluations"):
        same_sample_noise_multiplier(sigma, 0)
