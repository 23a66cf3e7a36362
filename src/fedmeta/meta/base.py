"""The shared protocol of gradient-based meta-learners, over plain parameter dicts.

A meta-learner holds meta-parameters `meta` (a flat dict name -> tensor: the network's
initialisation, plus learned inner learning rates for Meta-SGD). Training and evaluation
call the same `adapt`: a few gradient steps on a task's support set, differentiable so the
outer gradient can go through them (MAML) or not (first order). Gradients are taken with
torch.autograd, or with torch.func inside torch.func transforms (`autodiff.py`), so every
method also runs under `vmap` (the federated runtime maps `meta_gradient` over clients).

Episodes are batched on a task axis (`TaskBatch`). `batching="loop"` runs tasks one by one
and averages; `"vmap"` computes all tasks at once: for a `fedmeta.models.MLP` with plain
gradient-descent inner steps (MAML, FOMAML, ANIL) in factored form (`factored.py`), for
other nets as `torch.func.vmap` of per-task gradients. All give the same numbers. `"auto"`
picks by measurement (benchmarks/meta_speed.py, one thread, against a plain
`autograd.grad(create_graph=True)` loop; docs/meta-learning.md): vmap for nets without
convolutions (sinusoid MLP: the factored vmap 11.5x the plain loop at 25 tasks and 36.5x
at 1000, the loop 0.96x), the loop for convolutional nets (Conv4 on Omniglot: the loop
1.05x, vmap 0.41x, its batched convolution backward doing 3.2x the loop's FLOPs).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, vmap

from fedmeta.data.base import Kind, TaskBatch
from fedmeta.meta import factored
from fedmeta.meta.autodiff import eager, grad_with_aux, mean_grad_and_value, tracked
from fedmeta.params import Params

Batching = Literal["auto", "vmap", "loop"]


def batching_for(model: nn.Module) -> Literal["vmap", "loop"]:
    """What "auto" batching means, for tasks and for federated clients alike: the loop for
    convolutional nets, vmap for the rest (measured; see the module docstring)."""
    return "loop" if any(isinstance(m, nn.Conv2d) for m in model.modules()) else "vmap"


def loss_for(kind: Kind, class_weights: tuple[float, ...] | None = None) -> Callable[[Tensor, Tensor], Tensor]:
    """Mean squared error for regression, cross-entropy for classification: with
    `class_weights` (`data.class_weights`) the weighted mean Σ w_y ℓ / Σ w_y."""
    if kind == "regression":
        return F.mse_loss
    if class_weights is None:
        return F.cross_entropy
    weights = torch.tensor(class_weights, dtype=torch.float32)

    def weighted(logits: Tensor, labels: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, weight=weights.to(logits.device, logits.dtype))

    return weighted


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(-1) == labels).float().mean()


@dataclass
class MetaLearner:
    """MAML-style learner: subclasses change what adapts, how, and the outer gradient.

    model: the network, used only through `functional_call`.
    kind: "regression" or "classification" (chooses the loss).
    inner_steps, inner_lr: the adaptation loop used in training.
    first_order: drop second derivatives of the inner loop from the outer gradient.
    batching: how a meta-batch's tasks are computed (module docstring).
    compile_query: run each task's query pass (forward and backward at the adapted
        weights) through `torch.compile`, outside torch.func transforms. On Conv4 Omniglot
        with one thread it made the loop 1.11-1.12x faster, 1.13-1.17x the plain autograd
        loop (fused batch norm, ReLU and pooling), after a one-off compile of about 30 s
        per input shape; off by default.
    """

    model: nn.Module
    kind: Kind
    inner_steps: int = 1
    inner_lr: float = 0.01
    first_order: bool = False
    batching: Batching = "auto"
    compile_query: bool = False
    class_weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        self.loss = loss_for(self.kind, self.class_weights)
        self._compiled_query = (
            torch.compile(self._query, dynamic=False) if self.compile_query else None
        )
        if self.batching == "auto":
            self.batching = batching_for(self.model)
        self._layers = factored.mlp_layers(self.model)

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

        second_order = not self.first_order and tracked(fast)
        for _ in range(self.inner_steps if steps is None else steps):
            grads, _ = grad_with_aux(
                lambda f: (support_loss(f), ()), fast, create_graph=second_order
            )
            fast = self.inner_step(meta, fast, grads)
        return {**frozen, **fast}

    def query_loss(self, meta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        """One task's meta-objective: query loss after adapting on the support set."""
        query = (
            self._compiled_query if self._compiled_query is not None and eager() else self._query
        )
        return query(self.adapt(meta, xs, ys), xq, yq)

    def _query(self, params: Params, xq: Tensor, yq: Tensor) -> Tensor:
        return self.loss(self.forward(params, xq), yq)

    # -- the outer gradient -----------------------------------------------------------
    def meta_gradient(self, meta: Params, batch: TaskBatch) -> tuple[Tensor, Params]:
        """Mean meta-objective over the batch's tasks and its gradient w.r.t. `meta`."""
        parts = (batch.xs, batch.ys, batch.xq, batch.yq)
        if self.batching == "vmap":
            adapted = self._factored_layers()
            if adapted is not None:
                return factored.meta_gradient(
                    meta,
                    batch,
                    self._layers,
                    adapted,
                    self.loss,
                    self.inner_steps,
                    self.inner_lr,
                    self.first_order,
                )
            # vmap of per-task gradients, then the mean: grad-of-vmap is wrong for batch-norm
            # nets (batch statistics), measured against the loop in tests/meta
            grads, losses = vmap(
                torch.func.grad_and_value(self.query_loss), in_dims=(None, 0, 0, 0, 0)
            )(meta, *parts)
            return losses.mean().detach(), {k: g.mean(0) for k, g in grads.items()}
        grads, loss = mean_grad_and_value(self.query_loss, meta, list(zip(*parts)))
        return loss, grads

    def _factored_layers(self) -> list[str] | None:
        """The adapted layers if the factored MLP form applies (plain inner steps, whole
        layers adapted), else None."""
        if self._layers is None or type(self).inner_step is not MetaLearner.inner_step:
            return None
        adapted = [p for p, _ in self._layers if self.adapts(p + ".weight")]
        if any(self.adapts(p + ".bias") != (p in adapted) for p, _ in self._layers):
            return None
        return adapted

    # -- evaluation ---------------------------------------------------------------------
    def predict(self, meta: Params, batch: TaskBatch, steps: int | None = None) -> tuple[Tensor, Tensor]:
        """The query outputs (tasks, query, outputs) before and after adaptation."""

        def one(xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> tuple[Tensor, Tensor]:
            before = self.forward(self.network(meta), xq)
            return before.detach(), self.forward(self.adapt(meta, xs, ys, steps), xq).detach()

        parts = (batch.xs, batch.ys, batch.xq, batch.yq)
        if self.batching == "vmap":
            return vmap(one)(*parts)
        before, after = zip(*(one(*task) for task in zip(*parts)))
        return torch.stack(before), torch.stack(after)

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
