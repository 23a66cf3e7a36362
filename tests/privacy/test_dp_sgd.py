"""DP-SGD against a plain per-example autograd loop and the ordinary mean gradient."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn
from torch.func import functional_call

from fedmeta.privacy.dpsgd import dp_sgd_steps, per_example_grads, poisson_sample, private_grad
from fedmeta.privacy.noise import InsecureNoiseWarning, seeded_rng

torch.manual_seed(0)
NET = nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3))
PARAMS = {k: v.detach() for k, v in NET.named_parameters()}
X = torch.randn(12, 5)
Y = torch.randint(0, 3, (12,))


def loss_fn(params: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(functional_call(NET, params, (x,)), y)


def _loop_grads() -> list[dict[str, torch.Tensor]]:
    """Reference: one autograd call per example."""
    out = []
    for i in range(len(X)):
        p = {k: v.clone().requires_grad_() for k, v in PARAMS.items()}
        gs = torch.autograd.grad(loss_fn(p, X[i : i + 1], Y[i : i + 1]), list(p.values()))
        out.append(dict(zip(p, gs)))
    return out


def test_per_example_grads_match_autograd_loop() -> None:
    got = per_example_grads(loss_fn, PARAMS, X, Y)
    for i, ref in enumerate(_loop_grads()):
        for name in ref:
            torch.testing.assert_close(got[name][i], ref[name], rtol=1e-5, atol=1e-6)


def test_no_clip_no_noise_is_the_mean_gradient() -> None:
    p = {k: v.clone().requires_grad_() for k, v in PARAMS.items()}
    ref = torch.autograd.grad(loss_fn(p, X, Y), list(p.values()))
    got = private_grad(loss_fn, PARAMS, X, Y, max_grad_norm=math.inf, noise_multiplier=0.0)
    for name, r in zip(p, ref):
        torch.testing.assert_close(got[name], r, rtol=1e-5, atol=1e-6)


def test_clipping_is_per_example() -> None:
    c = 0.05
    ref_grads = _loop_grads()
    got = private_grad(loss_fn, PARAMS, X, Y, max_grad_norm=c, noise_multiplier=0.0)
    for name in PARAMS:
        ref = 0
        for g in ref_grads:
            norm = math.sqrt(sum(float(t.pow(2).sum()) for t in g.values()))
            ref = ref + g[name] * min(1.0, c / norm)
        torch.testing.assert_close(got[name], ref / len(X), rtol=1e-5, atol=1e-7)


def test_one_outlier_moves_the_sum_by_at_most_c() -> None:
    c = 0.05
    x = X.clone()
    x[3] *= 50.0  # an outlier whose own gradient is far larger than C
    keep = torch.arange(len(X)) != 3

    def summed(clip: float, rows: torch.Tensor) -> torch.Tensor:
        g = private_grad(
            loss_fn,
            PARAMS,
            x[rows],
            Y[rows],
            max_grad_norm=clip,
            noise_multiplier=0.0,
            expected_batch_size=1.0,
        )
        return torch.cat([t.flatten() for t in g.values()])

    every = torch.ones(len(X), dtype=torch.bool)
    moved = float((summed(c, every) - summed(c, keep)).norm())
    assert moved == pytest.approx(c, rel=1e-4)  # clipped to exactly C, not more
    assert float((summed(math.inf, every) - summed(math.inf, keep)).norm()) > 10 * c


def test_noise_std_is_sigma_c_over_batch() -> None:
    sigma, c, batch = 1.3, 0.2, 4.0
    kw = {"max_grad_norm": c, "noise_multiplier": sigma, "expected_batch_size": batch}

    def pure_noise() -> torch.Tensor:  # an empty batch: the output is the noise alone
        g = private_grad(loss_fn, PARAMS, X[:0], Y[:0], **kw)
        return torch.cat([t.flatten() for t in g.values()])

    draws = torch.stack([pure_noise() for _ in range(200)]).double()  # (200, dim)
    n, std = draws.numel(), sigma * c / batch
    stat = (n - 1) * draws.var() / std**2
    lo, hi = stats.chi2.ppf([1e-6 / 2, 1 - 1e-6 / 2], n - 1)
    assert lo < float(stat) < hi


def test_poisson_sample_rate() -> None:
    n, q = 100_000, 0.03
    k = len(poisson_sample(n, q))
    # Binomial(n, q): within 6 standard deviations.
    assert abs(k - n * q) < 6 * math.sqrt(n * q * (1 - q))


def test_dp_sgd_steps_reproducible_when_seeded_and_learns() -> None:
    kw = {"steps": 10, "lr": 0.5, "sample_rate": 0.5, "max_grad_norm": 1.0, "noise_multiplier": 0.3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureNoiseWarning)
        a = dp_sgd_steps(loss_fn, PARAMS, X, Y, rng=seeded_rng(1), **kw)
        b = dp_sgd_steps(loss_fn, PARAMS, X, Y, rng=seeded_rng(1), **kw)
    for name in a:
        assert torch.equal(a[name], b[name])
    assert float(loss_fn(a, X, Y)) < float(loss_fn(PARAMS, X, Y))


def test_bad_arguments_name_the_field() -> None:
    with pytest.raises(ValueError, match="max_grad_norm"):
        private_grad(loss_fn, PARAMS, X, Y, max_grad_norm=math.inf, noise_multiplier=1.0)
    with pytest.raises(ValueError, match="sample_rate"):
        poisson_sample(10, 0.0, np.random.default_rng(0))
