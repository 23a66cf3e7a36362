"""Privacy stages against independent references: plain FedAvg, sampling distributions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from scipy import stats

from fedmeta.errors import BadInput
from fedmeta.privacy.noise import InsecureNoiseWarning, seeded_rng
from fedmeta.privacy.stages import (
    AdaptiveClip,
    central_dp,
    chain,
    clip,
    clip_indicator,
    distributed_dp,
    dp_aggregate,
    gaussian_noise,
    quantize,
)

ALPHA = 1e-6  # false-alarm rate of each statistical test


def _update(seed: int, scale: float = 1.0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "w": torch.randn(4, 3, generator=g) * scale,
        "b": torch.randn(3, generator=g) * scale,
    }


def _norm(u: dict[str, torch.Tensor]) -> float:
    return float(torch.cat([t.flatten() for t in u.values()]).double().norm())


def _apply(stage, updates):
    out, _ = stage.update(updates, stage.init(updates))
    return out


def _std_in_chi2_interval(samples: torch.Tensor, std: float) -> None:
    """(n−1)s²/σ² ~ χ²(n−1) for normal samples: reject outside the two-sided 1−ALPHA band."""
    x = samples.double().flatten().numpy()
    n = x.size
    stat = (n - 1) * x.var(ddof=1) / std**2
    lo, hi = stats.chi2.ppf([ALPHA / 2, 1 - ALPHA / 2], n - 1)
    assert lo < stat < hi, f"sample std {x.std(ddof=1):.5f} vs expected {std:.5f}"
    assert abs(x.mean()) < stats.norm.ppf(1 - ALPHA / 2) * std / math.sqrt(n)


def test_infinite_clip_and_zero_noise_are_identity() -> None:
    u = _update(0, scale=1e3)
    out = _apply(chain(clip(math.inf), gaussian_noise(0.0)), u)
    for name in u:
        assert torch.equal(out[name], u[name])


def test_dp_aggregate_without_noise_or_clip_is_plain_weighted_fedavg() -> None:
    updates = [_update(i, scale=10.0) for i in range(5)]
    weights = [0.2, 1.0, 0.5, 0.7, 0.1]
    got = dp_aggregate(
        updates, weights, max_norm=math.inf, noise_multiplier=0.0, expected_weight=sum(weights)
    )
    for name in updates[0]:
        ref = sum(w * u[name] for w, u in zip(weights, updates)) / sum(weights)
        torch.testing.assert_close(got[name], ref, rtol=1e-6, atol=1e-6)


def test_dp_aggregate_clips_each_client_and_uses_fixed_denominator() -> None:
    updates = [_update(i, scale=s) for i, s in enumerate([0.01, 100.0, 3.0])]
    got = dp_aggregate(updates, max_norm=1.0, noise_multiplier=0.0, expected_weight=4.0)
    for name in updates[0]:
        ref = sum(u[name] * min(1.0, 1.0 / _norm(u)) for u in updates) / 4.0
        torch.testing.assert_close(got[name], ref)


def test_clip_bounds_norm_and_keeps_small_updates() -> None:
    big, small = _update(1, scale=50.0), _update(2, scale=1e-3)
    clipped = _apply(clip(2.5), big)
    assert _norm(clipped) == pytest.approx(2.5, rel=1e-6)
    # direction kept: clipped is a positive multiple of the original
    ratio = clipped["w"] / big["w"]
    torch.testing.assert_close(ratio, torch.full_like(ratio, 2.5 / _norm(big)))
    kept = _apply(clip(2.5), small)
    for name in small:
        assert torch.equal(kept[name], small[name])
    assert clip_indicator(small, 2.5) == 1 and clip_indicator(big, 2.5) == 0


def test_gaussian_noise_std_matches() -> None:
    zeros = {"x": torch.zeros(100_000, dtype=torch.float64)}
    _std_in_chi2_interval(_apply(gaussian_noise(0.37), zeros)["x"], 0.37)


def test_central_placement_server_noise_is_sigma_times_clip() -> None:
    placement = central_dp(max_norm=0.5, noise_multiplier=1.3)
    summed = {"x": torch.zeros(100_000, dtype=torch.float64)}
    _std_in_chi2_interval(_apply(placement.server, summed)["x"], 1.3 * 0.5)


def test_distributed_placement_shares_sum_to_central_noise() -> None:
    n = 8
    placement = distributed_dp(max_norm=0.5, noise_multiplier=1.3, num_clients=n)
    zero = {"x": torch.zeros(25_000, dtype=torch.float64)}
    shares = [_apply(placement.client, zero)["x"] for _ in range(n)]
    _std_in_chi2_interval(shares[0], 1.3 * 0.5 / math.sqrt(n))
    _std_in_chi2_interval(sum(shares), 1.3 * 0.5)


def test_secure_noise_differs_between_calls() -> None:
    stage, zero = gaussian_noise(1.0), {"x": torch.zeros(16)}
    state = stage.init(zero)
    a, state = stage.update(zero, state)
    b, _ = stage.update(zero, stage.init(zero))
    assert not torch.equal(a["x"], b["x"])


def test_seeded_noise_is_reproducible_and_warns() -> None:
    u = _update(3)
    stage = gaussian_noise(1.0, seed=42)
    with pytest.warns(InsecureNoiseWarning, match="(?i)not secure"):
        first, state = stage.update(u, stage.init(u))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        second, _ = stage.update(u, state)
        replay, _ = stage.update(u, stage.init(u))
    assert torch.equal(first["w"], replay["w"])
    assert not torch.equal(first["w"], second["w"])  # the step counter advances the stream


def test_quantize_is_unbiased_and_bounded() -> None:
    x = {"x": torch.linspace(-0.9, 0.9, 200, dtype=torch.float64)}
    bits, bound, draws = 3, 1.0, 4000
    step = 2 * bound / (2**bits - 1)
    stage = quantize(bits, bound=bound, seed=7)
    state = stage.init(x)
    total = torch.zeros(200, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        for _ in range(draws):
            q, state = stage.update(x, state)
            assert (q["x"] - x["x"]).abs().max() <= step + 1e-12
            assert q["x"].abs().max() <= bound + 1e-12
            levels = (q["x"] + bound) / step
            torch.testing.assert_close(levels, levels.round())
            total += q["x"]
    # Each draw has variance <= step²/4, so the mean of `draws` has std <= step/(2√draws).
    z = stats.norm.ppf(1 - ALPHA / 2 / 200)
    assert (total / draws - x["x"]).abs().max() <= z * step / (2 * math.sqrt(draws))


def test_quantize_per_tensor_range_and_bad_bits() -> None:
    u = _update(4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        q = _apply(quantize(1, seed=1), u)
    for name in u:  # one bit: every value becomes ±max|x| of its tensor
        assert torch.allclose(q[name].abs(), u[name].abs().max().expand_as(q[name]))
    with pytest.raises(BadInput, match="bits"):
        quantize(0)


@pytest.mark.parametrize("initial_clip", [0.05, 20.0])
def test_adaptive_clip_converges_to_target_quantile(initial_clip: float) -> None:
    # Update norms ~ Exp(1): the γ-quantile is −ln(1−γ) ≈ 1.20, far from either start.
    gamma, clients, rounds = 0.7, 200, 400
    rule = AdaptiveClip(
        target_quantile=gamma, initial_clip=initial_clip, learning_rate=0.2, count_std=2.0
    )
    state = rule.init()
    rng = np.random.default_rng(0)
    history = []
    for _ in range(rounds):
        norms = rng.exponential(1.0, clients)
        count = int((norms <= state["clip"]).sum())
        state = rule.update(count, clients, state)
        history.append(state["clip"])
    true_q = -math.log(1 - gamma)
    assert np.mean(history[-100:]) == pytest.approx(true_q, rel=0.05)


def test_bad_stage_arguments_name_the_field() -> None:
    with pytest.raises(BadInput, match="max_norm"):
        clip(-1.0)
    with pytest.raises(BadInput, match="target_quantile"):
        AdaptiveClip(target_quantile=1.5, initial_clip=1.0, learning_rate=0.1, count_std=1.0)
    with pytest.raises(BadInput, match="weights"):
        dp_aggregate([_update(0)], [2.0], max_norm=1.0, noise_multiplier=0.0, expected_weight=1)


def test_seeded_rng_for_dp_aggregate_reproducible() -> None:
    updates = [_update(i) for i in range(3)]
    with pytest.warns(InsecureNoiseWarning):
        rngs = [seeded_rng(5, 0), seeded_rng(5, 0)]
    a, b = (
        dp_aggregate(updates, max_norm=1.0, noise_multiplier=1.0, expected_weight=3, rng=r)
        for r in rngs
    )
    assert torch.equal(a["w"], b["w"])


def test_chain_state_survives_a_checkpoint(tmp_path) -> None:
    u = _update(6)
    stage = chain(clip(1.0), gaussian_noise(0.5, seed=9), quantize(4, bound=1.0, seed=10))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        _, state = stage.update(u, stage.init(u))
        torch.save(state, tmp_path / "state.pt")
        expected, _ = stage.update(u, state)
        resumed, _ = stage.update(u, torch.load(tmp_path / "state.pt", weights_only=True))
    for name in u:
        assert torch.equal(expected[name], resumed[name])
