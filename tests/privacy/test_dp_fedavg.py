"""DP-FedAvg as the runtime runs it (`federated/dp_fedavg.py`, `federated/aggregation.py`):
clipping, the central noise and the local shares have the stated scale (χ² tests), the sum
is divided by the fixed expected count, adaptive clipping finds its quantile, seeded noise
replays, and the weighted sums match a reference computed by hand."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from fedmeta.errors import BadInput
from fedmeta.federated.aggregation import DPMean
from fedmeta.federated.dp_fedavg import ClientLevelDP
from fedmeta.params import clip, global_norm, weighted_mean, weighted_sum
from fedmeta.privacy.adaptive_clip import AdaptiveClip
from fedmeta.privacy.noise import InsecureNoiseWarning, rng_for, seeded_rng

ALPHA = 1e-6  # false-alarm rate of each statistical test


def _update(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"w": torch.randn(4, 3, generator=g) * scale, "b": torch.randn(3, generator=g) * scale}


def _std_in_chi2_interval(samples: torch.Tensor, std: float) -> None:
    """(n−1)s²/σ² ~ χ²(n−1) for normal samples: reject outside the two-sided 1−ALPHA band."""
    x = samples.double().flatten().numpy()
    n = x.size
    stat = (n - 1) * x.var(ddof=1) / std**2
    lo, hi = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], n - 1)
    assert lo < stat < hi, f"sample std {x.std(ddof=1):.5f} vs expected {std:.5f}"
    assert abs(x.mean()) < stats.norm.ppf(1 - ALPHA / 2) * std / math.sqrt(n)


def dp(placement: str = "central", z: float = 0.0, clip_norm: float = 1.0, m: float = 4.0) -> ClientLevelDP:
    return ClientLevelDP(placement, z, clip_norm, m, sample_rate=0.5)


def test_weighted_sum_and_mean_match_a_hand_computed_reference() -> None:
    updates = [_update(i, scale=10.0) for i in range(5)]
    weights = [0.2, 1.0, 0.5, 0.7, 0.1]
    total, mean = weighted_sum(updates, weights), weighted_mean(updates, weights)
    for name in updates[0]:
        ref = sum(w * u[name].double() for w, u in zip(weights, updates, strict=True))
        torch.testing.assert_close(total[name], ref.float())
        torch.testing.assert_close(mean[name], (ref / sum(weights)).float())
    with pytest.raises(BadInput, match="weights"):
        weighted_mean(updates, [0.0] * 5)
    with pytest.raises(BadInput, match="weights"):
        weighted_sum(updates, [1.0, 2.0])


def test_clip_bounds_the_norm_and_keeps_small_updates() -> None:
    big, small = _update(1, scale=50.0), _update(2, scale=1e-3)
    clipped = clip(big, 2.5)
    assert global_norm(clipped) == pytest.approx(2.5, rel=1e-6)
    ratio = clipped["w"] / big["w"]  # direction kept: a positive multiple of the original
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.5 / global_norm(big)))
    assert all(torch.equal(clip(small, 2.5)[k], small[k]) for k in small)


def test_client_half_clips_and_reports_whether_it_had_to() -> None:
    big, small = _update(1, scale=50.0), _update(2, scale=1e-3)
    out, report = dp().privatize(big, 2.5, rng_for(None))
    assert global_norm(out) == pytest.approx(2.5, rel=1e-6) and report == 0.0
    out, report = dp().privatize(small, 2.5, rng_for(None))
    assert all(torch.equal(out[k], small[k]) for k in small) and report == 1.0


def test_server_half_clips_each_client_and_divides_by_the_expected_count() -> None:
    updates = [_update(i, scale=s) for i, s in enumerate([0.01, 100.0, 3.0])]
    got = DPMean(dp(m=4.0))(updates, [1.0] * 3, [0.0] * 3, rng_for(None)).delta
    for name in updates[0]:
        ref = sum(u[name] * min(1.0, 1.0 / global_norm(u)) for u in updates) / 4.0
        torch.testing.assert_close(got[name], ref)


def test_central_noise_is_sigma_times_clip_and_costs_one_gaussian_per_round() -> None:
    mech = dp("central", z=1.3, clip_norm=0.5, m=1.0)
    zero = [{"x": torch.zeros(100_000, dtype=torch.float64)}]
    out = DPMean(mech)(zero, [1.0], [0.0], rng_for(None))
    _std_in_chi2_interval(out.delta["x"], 1.3 * 0.5)
    assert out.event == {"noise_multiplier": 1.3, "sample_rate": 0.5, "steps": 1}
    assert dp("central", z=0.0).event() is None


def test_local_shares_sum_to_the_central_noise() -> None:
    n = 8
    mech = dp("local", z=1.3, clip_norm=0.5, m=n)
    zero = {"x": torch.zeros(25_000, dtype=torch.float64)}
    shares = [mech.privatize(zero, 0.5, rng_for(None))[0]["x"] for _ in range(n)]
    _std_in_chi2_interval(shares[0], 1.3 * 0.5 / math.sqrt(n))
    _std_in_chi2_interval(sum(shares), 1.3 * 0.5)
    assert DPMean(mech)([zero], [1.0], [0.0], rng_for(None)).delta["x"].abs().max() == 0  # no server noise


def test_secure_noise_differs_and_seeded_noise_replays_with_a_warning() -> None:
    mech, u = dp("central", z=1.0), [_update(3)]
    a, b = (DPMean(mech)(u, [1.0], [0.0], rng_for(None)).delta for _ in range(2))
    assert not torch.equal(a["w"], b["w"])
    with pytest.warns(InsecureNoiseWarning, match="(?i)not secure"):
        rngs = [seeded_rng(5, 1, 0), seeded_rng(5, 1, 0), seeded_rng(5, 2, 0)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        first, replay, other = (DPMean(mech)(u, [1.0], [0.0], r).delta for r in rngs)
    assert torch.equal(first["w"], replay["w"]) and not torch.equal(first["w"], other["w"])


@pytest.mark.parametrize("initial_clip", [0.05, 20.0])
def test_adaptive_clip_converges_to_target_quantile(initial_clip: float) -> None:
    # Update norms ~ Exp(1): the γ-quantile is −ln(1−γ) ≈ 1.20, far from either start.
    gamma, clients, rounds = 0.7, 200, 400
    rule = AdaptiveClip(target_quantile=gamma, initial_clip=initial_clip, learning_rate=0.2, count_std=2.0)
    state = rule.init()
    rng = np.random.default_rng(0)
    history = []
    for _ in range(rounds):
        norms = rng.exponential(1.0, clients)
        state = rule.update(int((norms <= state["clip"]).sum()), clients, state)
        history.append(state["clip"])
    assert np.mean(history[-100:]) == pytest.approx(-math.log(1 - gamma), rel=0.05)


def test_bad_adaptive_clip_arguments_name_the_field() -> None:
    with pytest.raises(BadInput, match="target_quantile"):
        AdaptiveClip(target_quantile=1.5, initial_clip=1.0, learning_rate=0.1, count_std=1.0)
    with pytest.raises(BadInput, match="initial_clip"):
        AdaptiveClip(target_quantile=0.5, initial_clip=-1.0, learning_rate=0.1, count_std=1.0)
