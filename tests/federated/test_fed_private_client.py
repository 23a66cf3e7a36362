"""Example-level DP local procedures against plain autograd references and dp-accounting."""

from __future__ import annotations

import math
from dataclasses import replace

import dp_accounting as dpa
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch.func import functional_call

import fedmeta.privacy.dpsgd as dpsgd
from fedmeta.config import check_example_dp
from fedmeta.data.base import TaskBatch
from fedmeta.data.federated import ExampleClient, WeightedTasks
from fedmeta.data.sinusoid import Sinusoid
from fedmeta.errors import ConfigError
from fedmeta.federated.client import LocalSGD
from fedmeta.federated.private_client import PrivateLocal, Sample
from fedmeta.meta import ANIL, FOMAML, MAML, MetaSGD, Reptile
from fedmeta.models import MLP, Conv4, parameters_of
from fedmeta.privacy.accountant import Accountant

torch.manual_seed(0)
MODEL = MLP(5, 3, (8,))
THETA = parameters_of(MODEL)
X = torch.randn(8, 5)
Y = torch.randint(0, 3, (8,))
HALF = torch.tensor([True, False] * 4)  # support / query coins, 4 and 4
CLIENT = ExampleClient(torch.randn(20, 5), torch.randint(0, 3, (20,)), 5, 5, "classification", 3)
EXACT = {"clip_norm": math.inf, "noise_multiplier": 0.0}


def flat(p: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.flatten() for v in p.values()])


def ce(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(functional_call(MODEL, p, (x,)), y)


def autograd(
    p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, names: list[str]
) -> dict:
    leaves = {k: v.detach().clone().requires_grad_(k in names) for k, v in p.items()}
    gs = torch.autograd.grad(ce(leaves, x, y), [leaves[k] for k in names])
    return dict(zip(names, gs))


def private(learner=None, **kw) -> PrivateLocal:
    args = {"sample_rate": 1.0, "clip_norm": 1.0, "noise_multiplier": 0.0, **kw}
    return PrivateLocal(MODEL, "classification", 0.3, learner=learner, **args)


# -- degenerate cases: zero noise, infinite clip = the plain procedures ---------------------
@pytest.mark.parametrize("mu", [0.0, 0.5])
def test_sgd_step_without_noise_or_clip_is_local_sgd(mu: float) -> None:
    anchor = {k: v + 0.1 for k, v in THETA.items()}
    got = private(mu=mu, **EXACT).step(
        THETA, anchor, Sample(X, Y, HALF, 8.0), np.random.default_rng(0)
    )
    batch = TaskBatch(X[None, :3], Y[None, :3], X[None, 3:], Y[None, 3:])
    ref = LocalSGD(MODEL, "classification", 0.3, mu).step(THETA, anchor, batch)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-5, atol=1e-6)


def test_run_at_rate_one_is_full_batch_gradient_descent() -> None:
    delta = private(**EXACT).run(THETA, CLIENT, 2, np.random.default_rng(0))
    p = THETA
    for _ in range(2):
        g = autograd(p, CLIENT.x, CLIENT.y, list(p))
        p = {k: v - 0.3 * g[k] for k, v in p.items()}
    for k in p:
        torch.testing.assert_close(delta[k], p[k] - THETA[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("cls", [FOMAML, ANIL])
def test_first_order_meta_step_is_plain_autograd_on_the_same_split(cls) -> None:
    inner_lr, steps = 0.2, 2
    learner = cls(MODEL, "classification", inner_steps=steps, inner_lr=inner_lr)
    got = private(learner, **EXACT).step(
        THETA, THETA, Sample(X, Y, HALF, 8.0), np.random.default_rng(0)
    )
    adapted = [k for k in THETA if cls is FOMAML or k.startswith("head.")]
    phi = dict(THETA)
    for _ in range(steps):  # plain first-order inner loop on the support half
        g = autograd(phi, X[HALF], Y[HALF], adapted)
        phi = {k: v - inner_lr * g[k] if k in g else v for k, v in phi.items()}
    outer = autograd(phi, X[~HALF], Y[~HALF], list(THETA))  # query gradient at φ, all parameters
    for k in THETA:
        torch.testing.assert_close(got[k], THETA[k] - 0.3 * outer[k], rtol=1e-5, atol=1e-6)


def test_reptile_step_is_plain_reptile_on_the_whole_sample() -> None:
    learner = Reptile(MODEL, "classification", inner_steps=3, inner_lr=0.2)
    got = private(learner, **EXACT).step(
        THETA, THETA, Sample(X, Y, HALF, 8.0), np.random.default_rng(0)
    )
    phi = dict(THETA)
    for _ in range(3):
        g = autograd(phi, X, Y, list(THETA))
        phi = {k: v - 0.2 * g[k] for k, v in phi.items()}
    for k in THETA:
        torch.testing.assert_close(
            got[k], THETA[k] - 0.3 * (THETA[k] - phi[k]), rtol=1e-5, atol=1e-6
        )


# -- clipping, noise, ANIL's frozen body ----------------------------------------------------
def _outlier() -> torch.Tensor:
    x = X.clone()
    x[2] *= 200.0  # a support example (HALF[2]) whose own gradient is far larger than C
    x[3] *= 200.0  # a query example
    return x


@pytest.mark.parametrize("where", ["sgd", "support", "query"])
def test_one_huge_example_moves_the_result_by_at_most_c(where: str) -> None:
    c, x = 0.05, _outlier()
    row = {"sgd": 3, "support": 2, "query": 3}[where]
    keep = torch.arange(8) != row
    learner = (
        None if where == "sgd" else FOMAML(MODEL, "classification", inner_steps=1, inner_lr=0.2)
    )

    def result(clip: float, rows: torch.Tensor) -> torch.Tensor:
        proc = private(learner, clip_norm=clip)
        sample = Sample(x[rows], Y[rows], HALF[rows], 8.0)
        if where == "support":  # the inner step alone: later steps are post-processing
            return flat(
                proc.adapt(THETA, sample.x[sample.support], sample.y[sample.support], 4.0, None)
            )
        return flat(proc.step(THETA, THETA, sample, np.random.default_rng(0)))

    lr, divisor = (0.2, 4.0) if where == "support" else (0.3, 8.0 if where == "sgd" else 4.0)
    moved = float((result(c, torch.ones(8, dtype=torch.bool)) - result(c, keep)).norm())
    assert moved == pytest.approx(lr * c / divisor, rel=1e-4)
    unclipped = float(
        (result(math.inf, torch.ones(8, dtype=torch.bool)) - result(math.inf, keep)).norm()
    )
    assert unclipped > 10 * lr * c / divisor


def test_noise_std_is_sigma_c_over_expected_batch() -> None:
    sigma, c, q = 1.3, 0.5, 0.5
    noisy = private(sample_rate=q, clip_norm=c, noise_multiplier=sigma)
    clean = replace(noisy, noise_multiplier=0.0)
    # the same seed draws the same Poisson sample; the difference is the noise alone, × lr
    draws = torch.stack(
        [
            flat(noisy.run(THETA, CLIENT, 1, np.random.default_rng(s)))
            - flat(clean.run(THETA, CLIENT, 1, np.random.default_rng(s)))
            for s in range(40)
        ]
    ).double()  # (40, dim)
    std = 0.3 * sigma * c / (q * CLIENT.n_examples)
    stat = float((draws / std).pow(2).sum())  # χ² with draws.numel() degrees of freedom
    lo, hi = stats.chi2.ppf([1e-6 / 2, 1 - 1e-6 / 2], draws.numel())
    assert lo < stat < hi


def test_anil_inner_loop_leaves_the_body_unchanged() -> None:
    learner = ANIL(MODEL, "classification", inner_steps=2, inner_lr=0.2)
    proc = private(learner, noise_multiplier=1.0)
    rng = np.random.default_rng(0)
    phi = proc.adapt(THETA, X, Y, 4.0, rng)
    for k in THETA:
        if k.startswith("head."):
            assert not torch.equal(phi[k], THETA[k])
        else:
            assert torch.equal(phi[k], THETA[k])
    new = proc.step(THETA, THETA, Sample(X, Y, HALF, 8.0), rng)
    assert all(not torch.equal(new[k], THETA[k]) for k in THETA)  # the outer step moves the body


# -- accounting -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "learner",
    [
        None,
        FOMAML(MODEL, "classification", inner_steps=2),
        ANIL(MODEL, "classification", inner_steps=3),
        Reptile(MODEL, "classification", inner_steps=2),
    ],
)
def test_accounting_counts_every_noised_gradient(monkeypatch, learner) -> None:
    calls = []
    real = dpsgd.gaussian_like
    monkeypatch.setattr(dpsgd, "gaussian_like", lambda *a: calls.append(1) or real(*a))
    proc = private(learner, sample_rate=0.3, noise_multiplier=1.1)
    proc.run(THETA, CLIENT, 1, np.random.default_rng(0))
    sigma, q, rounds, local_steps = 1.1, 0.3, 4, 3
    acc = Accountant("rdp")
    for _ in range(rounds):
        acc.step(**proc.round_steps(local_steps))
    # dp-accounting itself: k Gaussian events on the same Poisson sample, T steps
    k = len(calls)
    step = dpa.PoissonSampledDpEvent(q, dpa.ComposedDpEvent([dpa.GaussianDpEvent(sigma)] * k))
    ref = dpa.rdp.RdpAccountant().compose(dpa.SelfComposedDpEvent(step, rounds * local_steps))
    assert acc.epsilon(1e-5) == pytest.approx(ref.get_epsilon(1e-5), rel=1e-9)


# -- what is refused ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, field",
    [
        (("fedmeta", "maml"), "meta.algorithm"),
        (("fedmeta", "metasgd"), "meta.algorithm"),
        (("perfedavg", "fomaml"), "federated.clients.procedure"),
        (("sgd", "maml", "sinusoid"), "data.name"),
        (("fedmeta", "anil", "omniglot"), "data.name"),
        (("sgd", "maml", "digits", "conv4"), "model.name"),
    ],
)
def test_unsupported_combinations_name_the_field(args, field: str) -> None:
    names = ("procedure", "algorithm", "data", "model")
    kw = dict(zip(names[2:], args[2:]))
    with pytest.raises(ConfigError) as err:
        check_example_dp(*args[:2], **kw)
    assert err.value.field == field
    assert "privacy.dp = 'example'" in str(err.value) and "\n" not in str(err.value)


def test_supported_combinations_pass() -> None:
    for procedure in ("sgd", "fedprox", "fedmeta"):
        for algorithm in ("fomaml", "reptile", "anil"):
            check_example_dp(procedure, algorithm, data="synthetic", model="mlp")


@pytest.mark.parametrize(
    "make",
    [
        lambda: private(MAML(MODEL, "classification")),
        lambda: private(MetaSGD(MODEL, "classification")),
        lambda: private(Reptile(MODEL, "classification", inner_steps=0)),
        lambda: PrivateLocal(
            Conv4(1, 3, 4, 8),
            "classification",
            0.1,
            sample_rate=0.1,
            clip_norm=1.0,
            noise_multiplier=1.0,
        ),
        lambda: private(sample_rate=0.0),
        lambda: private(clip_norm=math.inf, noise_multiplier=1.0),
        lambda: private().run(THETA, WeightedTasks(Sinusoid()), 1),
    ],
)
def test_procedure_refuses_what_it_cannot_protect(make) -> None:
    with pytest.raises(ConfigError):
        make()
