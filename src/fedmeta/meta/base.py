"""The shared protocol of gradient-based meta-learners, over plain parameter dicts.

A meta-learner holds meta-parameters `meta` (a flat dict name -> tensor: the network's
initialisation, plus learned inner learning rates for Meta-SGD). Training and evaluation
call the same `adapt`: a few gradient steps on a task's support set, written with
torch.func so the outer gradient can differentiate through it (MAML) or not (first order).

Episodes are batched on a task axis (`TaskBatch`). `batching="vmap"` maps one task's
computation over that axis with `torch.func.vmap`; `"loop"` runs tasks one by one and
averages. Both give the same numbers; which is faster depends on the network, so
`"auto"` picks by measurement (benchmarks/meta_speed.py): vmap for MLPs, where it is many
times faster on CPU, and the loop for convolutional nets, where vmap is slower.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap

from fedmeta.data.base import Kind, TaskBatch

Params = dict[str, Tensor]
Batching = Literal["auto", "vmap", "loop"]


def loss_for(kind: Kind) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean squared error for regression, cross-entropy for classification."""
    return F.mse_loss if kind == "regression" else F.cross_entropy


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).float().mean()


@dataclass
class MetaLearner:
    """MAML-style learner: subclasses change what adapts, how, and the outer gradient.

    model: the network, used only through `functional_call`.
    kind: "regression" or "classification" (chooses the loss).
    inner_steps, inner_lr: the adaptation loop used in training.
    first_order: drop second derivatives of the inner loop from the outer gradient.
    """

    model: nn.Module
    kind: Kind
    inner_steps: int = 1
    inner_lr: float = 0.01
    first_order: bool = False
    batching: Batching = "auto"

    def __post_init__(self) -> None:
        self.loss = loss_for(self.kind)
        if self.batching == "auto":
            has_conv = any(isinstance(m, nn.Conv2d) for m in self.model.modules())
            self.batching = "loop" if has_conv else "vmap"

    # -- what the meta-parameters are -------------------------------------------------
    def init(self, params: Params) -> Params:
        """Meta-parameters from network parameters (MAML: the initialisation itself)."""
        return dict(params)

    def network(self, meta: Params) -> Params:
        """The network parameters held in `meta`."""
        return meta

    def adapts(self, name: str) -> bool:
        """Whether the inner loop changes parameter `name` (ANIL: only the head)."""
        return True

    def inner_step(self, meta: Params, fast: Params, grads: Params) -> Params:
        """One inner update; plain gradient descent with the shared inner learning rate."""
        return {k: fast[k] - self.inner_lr * grads[k] for k in fast}

    # -- the shared adaptation loop ---------------------------------------------------
    def forward(self, params: Params, x: Tensor) -> Tensor:
        return functional_call(self.model, params, (x,))

    def _split(self, meta: Params) -> tuple[Params, Params]:
        net = self.network(meta)
        fast = {k: v for k, v in net.items() if self.adapts(k)}
        return fast, {k: v for k, v in net.items() if k not in fast}

    def adapt(self, meta: Params, xs: Tensor, ys: Tensor, steps: int | None = None) -> Params:
        """Network parameters after `steps` inner steps on one task's support set (xs, ys)."""
        fast, frozen = self._split(meta)

        def support_loss(fast: Params) -> Tensor:
            return self.loss(self.forward({**frozen, **fast}, xs), ys)

        for _ in range(self.inner_steps if steps is None else steps):
            grads = grad(support_loss)(fast)
            if self.first_order:
                grads = {k: g.detach() for k, g in grads.items()}
            fast = self.inner_step(meta, fast, grads)
        return {**frozen, **fast}

    def query_loss(self, meta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        """One task's meta-objective: query loss after adapting on the support set."""
        return self.loss(self.forward(self.adapt(meta, xs, ys), xq), yq)

    # -- the outer gradient -----------------------------------------------------------
    def meta_gradient(self, meta: Params, batch: TaskBatch) -> tuple[Tensor, Params]:
        """Mean meta-objective over the batch's tasks and its gradient w.r.t. `meta`."""
        parts = (batch.xs, batch.ys, batch.xq, batch.yq)
        if self.batching == "vmap":
            # vmap of per-task gradients, then the mean: grad-of-vmap is wrong for batch-norm
            # nets (batch statistics), measured against the loop in tests/meta
            grads, losses = vmap(grad_and_value(self.query_loss), in_dims=(None, 0, 0, 0, 0))(meta, *parts)
            return losses.mean().detach(), {k: g.mean(0) for k, g in grads.items()}
        losses, total = [], {k: torch.zeros_like(v) for k, v in meta.items()}
        for task in zip(*parts):
            g, loss = grad_and_value(self.query_loss)(meta, *task)
            losses.append(loss.detach())
            for k in total:
                total[k] += g[k]
        n = batch.n_tasks
        return torch.stack(losses).mean(), {k: v / n for k, v in total.items()}

    # -- evaluation ---------------------------------------------------------------------
    def evaluate(
        self, meta: Params, batch: TaskBatch, steps: int | None = None, per_task: bool = False
    ) -> dict[str, Any]:
        """Query loss (and accuracy) before and after adaptation: the mean over tasks, or
        with `per_task` a (tasks,) tensor of each."""

        def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, ...]:
            before = self.forward(self.network(meta), xq)
            after = self.forward(self.adapt(meta, xs, ys, steps), xq)
            out = (self.loss(before, yq), self.loss(after, yq))
            if self.kind == "classification":
                out += (accuracy(before, yq), accuracy(after, yq))
            return tuple(o.detach() for o in out)

        parts = (batch.xs, batch.ys, batch.xq, batch.yq)
        if self.batching == "vmap":
            values = vmap(one)(*parts)
        else:
            values = tuple(torch.stack(v) for v in zip(*(one(*task) for task in zip(*parts))))
        names = ("loss_before", "loss_after", "acc_before", "acc_after")
        if per_task:
            return dict(zip(names, values))
        return {name: float(v.mean()) for name, v in zip(names, values)}
