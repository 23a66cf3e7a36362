"""Membership-inference audits of a trained model: how well can an attacker tell members?

Two attacks, both reported as ROC AUC plus TPR at low FPR (1%, 0.1%), the regime Carlini
et al. (IEEE S&P 2022, "Membership Inference Attacks From First Principles") argue
matters, since an attack is only a threat if it is confident on some examples:

- the loss-threshold attack (Yeom, Giacomelli, Fredrikson & Jha, CSF 2018): members have
  lower loss, so the score is −loss;
- offline LiRA (Carlini et al. 2022, §VI): shadow models trained on random halves of the
  data give, per example, the distribution of the logit-scaled confidence
  φ = log(p_y / (1 − p_y)) when the example was NOT trained on; the score is how far the
  target model's φ sits above that Gaussian.

With n non-members, FPRs below 1/n can only be met with zero false positives, so read
TPR at 0.1% with at least a few thousand non-members.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score, roc_curve
from torch import Tensor

from fedmeta.errors import BadInput

ModelFn = Callable[[Tensor], Tensor]  # inputs (n, ...) -> logits (n, classes)
DEFAULT_FPRS = (0.01, 0.001)


@dataclass(frozen=True)
class AuditResult:
    """Attack quality; `tpr_at_fpr` maps the FPR (as a string, for JSON) to the TPR there."""

    auc: float
    tpr_at_fpr: dict[str, float]
    n_members: int
    n_nonmembers: int

    def to_json(self) -> dict:
        return asdict(self)


def attack_metrics(
    member_scores: Sequence[float] | np.ndarray,
    nonmember_scores: Sequence[float] | np.ndarray,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> AuditResult:
    """AUC and TPR at each FPR of a score where higher means "member"."""
    members = np.asarray(member_scores, dtype=np.float64).ravel()
    nonmembers = np.asarray(nonmember_scores, dtype=np.float64).ravel()
    if members.size == 0 or nonmembers.size == 0:
        raise BadInput("scores", (members.size, nonmembers.size), "members and non-members")
    if not (np.isfinite(members).all() and np.isfinite(nonmembers).all()):
        raise BadInput("scores", "non-finite", "finite attack scores")
    labels = np.r_[np.ones(members.size), np.zeros(nonmembers.size)]
    scores = np.r_[members, nonmembers]
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return AuditResult(
        auc=float(roc_auc_score(labels, scores)),
        tpr_at_fpr={str(f): float(tpr[fpr <= f].max()) for f in fprs},
        n_members=int(members.size),
        n_nonmembers=int(nonmembers.size),
    )


def loss_threshold_attack(
    member_losses: Sequence[float] | np.ndarray,
    nonmember_losses: Sequence[float] | np.ndarray,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> AuditResult:
    """Yeom et al.'s attack from per-example losses: lower loss means "member"."""
    return attack_metrics(
        -np.asarray(member_losses, dtype=np.float64),
        -np.asarray(nonmember_losses, dtype=np.float64),
        fprs,
    )


def logit_confidence(logits: Tensor, labels: Tensor) -> Tensor:
    """φ = log(p_y / (1 − p_y)) = z_y − logsumexp_{j≠y} z_j, computed stably; (n,)."""
    logits = logits.double()  # (n, classes)
    true = logits.gather(1, labels.long().unsqueeze(1)).squeeze(1)  # (n,)
    others = logits.scatter(1, labels.long().unsqueeze(1), float("-inf"))
    return true - torch.logsumexp(others, dim=1)


def lira_offline(
    target: ModelFn,
    x: Tensor,
    y: Tensor,
    is_member: Sequence[bool] | np.ndarray,
    train_fn: Callable[[np.ndarray], ModelFn],
    *,
    num_shadow: int = 16,
    fixed_variance: bool = True,
    rng: np.random.Generator | None = None,
    fprs: Sequence[float] = DEFAULT_FPRS,
) -> AuditResult:
    """Offline LiRA against `target` on the pool (x, y), whose membership is `is_member`.

    `train_fn(indices)` trains a shadow model on the pool rows `indices` and returns its
    logits function. Splits are balanced as in Carlini et al.: each example is IN for
    exactly ⌊num_shadow/2⌋ shadows, chosen at random, and OUT for the rest. `fixed_variance` pools one σ over all examples, which Carlini et al.
    recommend below ~64 shadow models; otherwise each example gets its own.
    """
    member = np.asarray(is_member, dtype=bool)  # (n,)
    n = len(x)
    if member.shape != (n,):
        raise BadInput("is_member", member.shape, f"one flag per pool example: ({n},)")
    if not (isinstance(num_shadow, int) and num_shadow >= 4):
        raise BadInput("num_shadow", num_shadow, "an integer >= 4")
    rng = rng if rng is not None else np.random.default_rng()
    keep = rng.random((num_shadow, n)).argsort(0) < num_shadow // 2  # (shadows, n)
    out_phi = np.full((num_shadow, n), np.nan)  # (shadows, n): φ where the example was OUT
    for s, inside in enumerate(keep):
        shadow = train_fn(np.flatnonzero(inside))
        with torch.no_grad():
            out_phi[s, ~inside] = logit_confidence(shadow(x), y).numpy()[~inside]
    with torch.no_grad():
        target_phi = logit_confidence(target(x), y).numpy()  # (n,)
    mu = np.nanmean(out_phi, axis=0)  # (n,)
    std = np.nanstd(out_phi - mu) if fixed_variance else np.nanstd(out_phi, axis=0, ddof=1)
    score = (target_phi - mu) / np.maximum(std, 1e-12)  # one-sided: high φ means member
    return attack_metrics(score[member], score[~member], fprs)
