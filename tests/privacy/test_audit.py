"""Membership-inference audit: metrics against independent references; attacks on overfit nets."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from fedmeta.privacy.audit import (
    attack_metrics,
    lira_offline,
    logit_confidence,
    loss_threshold_attack,
)

N_POOL, DIM, CLASSES = 200, 20, 10


@pytest.fixture(autouse=True)
def _one_thread():
    """These nets are tiny: thread hand-offs cost more than the maths on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_auc_equals_mann_whitney_and_tpr_equals_threshold_sweep() -> None:
    rng = np.random.default_rng(0)
    members = np.round(rng.normal(0.7, 1.0, 300), 1)  # rounding makes ties
    nonmembers = np.round(rng.normal(0.0, 1.0, 1000), 1)
    result = attack_metrics(members, nonmembers, fprs=(0.01, 0.05))
    u = stats.mannwhitneyu(members, nonmembers, alternative="two-sided").statistic
    assert result.auc == pytest.approx(u / (members.size * nonmembers.size), rel=1e-12)
    for f in (0.01, 0.05):
        best = max(
            (members >= t).mean()
            for t in np.r_[np.inf, members, nonmembers]
            if (nonmembers >= t).mean() <= f
        )
        assert result.tpr_at_fpr[str(f)] == pytest.approx(best)
    assert (result.n_members, result.n_nonmembers) == (300, 1000)


def test_logit_confidence_is_log_odds_of_true_class() -> None:
    logits = torch.randn(50, CLASSES, dtype=torch.float64)
    labels = torch.randint(0, CLASSES, (50,))
    p = logits.softmax(1)[torch.arange(50), labels]
    torch.testing.assert_close(logit_confidence(logits, labels), torch.log(p / (1 - p)))


def _data(seed: int, n: int = N_POOL) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, DIM, generator=g), torch.randint(0, CLASSES, (n,), generator=g)


def _train(x: torch.Tensor, y: torch.Tensor, seed: int, steps: int = 150) -> nn.Module:
    """An MLP that memorises its (random-label) training set."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(DIM, 128), nn.ReLU(), nn.Linear(128, CLASSES))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return net.eval()


def _losses(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return F.cross_entropy(net(x), y, reduction="none").numpy()


def test_loss_attack_detects_memorisation_and_not_chance() -> None:
    x, y = _data(0)
    members, outsiders = slice(0, 100), slice(100, 200)
    net = _train(x[members], y[members], seed=0)
    result = loss_threshold_attack(
        _losses(net, x[members], y[members]), _losses(net, x[outsiders], y[outsiders])
    )
    assert result.auc > 0.9
    assert result.tpr_at_fpr["0.01"] > 0.5
    # Two disjoint non-member sets are indistinguishable: AUC ~ 0.5, std 0.018 at 500 vs 500.
    x2, y2 = _data(1, n=1000)
    null = loss_threshold_attack(_losses(net, x2[:500], y2[:500]), _losses(net, x2[500:], y2[500:]))
    assert abs(null.auc - 0.5) < 0.09
    assert set(result.to_json()) == {"auc", "tpr_at_fpr", "n_members", "n_nonmembers"}


def test_lira_offline_on_memorising_model() -> None:
    x, y = _data(2)
    is_member = np.zeros(N_POOL, dtype=bool)
    is_member[np.random.default_rng(3).permutation(N_POOL)[: N_POOL // 2]] = True
    target = _train(x[is_member], y[is_member], seed=1)

    def train_fn(idx: np.ndarray):
        return _train(x[idx], y[idx], seed=int(idx[:3].sum()))

    result = lira_offline(
        target, x, y, is_member, train_fn, num_shadow=4, rng=np.random.default_rng(4)
    )
    assert result.auc > 0.9
    assert result.n_members == result.n_nonmembers == N_POOL // 2
