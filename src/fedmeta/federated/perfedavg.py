"""Per-FedAvg (Fallah, Mokhtari & Ozdaglar 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach").

Each local step, for a batch D (support), D' (query) and, for the Hessian-free variant,
an independent batch D'':
    w̃ = w − α∇f(w; D)
    FO: w ← w − β∇f(w̃; D')
    HF: w ← w − β[∇f(w̃; D') − α∇²f(w; D'')∇f(w̃; D')]
The Hessian-vector product is exact (reverse-over-reverse); the paper estimates it with
finite differences, which it approximates. Episodes are averaged as a meta-batch; D''
of episode i is the query set of episode i+1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from fedmeta.data.base import TaskBatch
from fedmeta.meta.base import Params, loss_for


@dataclass
class PerFedAvg:
    model: nn.Module
    kind: str
    alpha: float
    beta: float
    variant: str = "fo"
    class_weights: tuple[float, ...] | None = None

    def _loss(self, p: Params, x: Tensor, y: Tensor) -> Tensor:
        return loss_for(self.kind, self.class_weights)(functional_call(self.model, p, (x,)), y)

    def direction(self, w: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor, xh: Tensor, yh: Tensor) -> Params:
        g_d = grad(self._loss)(w, xs, ys)
        w_tilde = {k: w[k] - self.alpha * g_d[k] for k in w}
        g = grad(self._loss)(w_tilde, xq, yq)
        if self.variant == "hf":
            def g_dot_v(p: Params) -> Tensor:  # ∇f(p; D'')·v, whose gradient is the HVP
                gh = grad(self._loss)(p, xh, yh)
                return sum((gh[k] * g[k].detach()).sum() for k in gh)

            hvp = grad(g_dot_v)(w)
            g = {k: g[k] - self.alpha * hvp[k] for k in g}
        return g

    def step(self, params: Params, anchor: Params, episodes: TaskBatch) -> Params:
        n = episodes.xs.shape[0]
        total = {k: torch.zeros_like(v) for k, v in params.items()}
        for i in range(n):
            j = (i + 1) % n
            d = self.direction(params, episodes.xs[i], episodes.ys[i], episodes.xq[i], episodes.yq[i], episodes.xq[j], episodes.yq[j])
            total = {k: total[k] + d[k] / n for k in total}
        return {k: p - self.beta * total[k] for k, p in params.items()}
