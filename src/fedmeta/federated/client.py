"""Clients' local procedures: from the global parameters to a local update Δ = θ_local − θ.

A procedure is a `step(params, anchor, episodes) -> params` over parameter dicts, where
`anchor` is the round's global model and `episodes` a TaskBatch drawn from the client's
own data. `local_update` runs up to `max_steps` steps, masking the steps beyond a
client's own `n_steps` (heterogeneous local work), so clients of one round can be
batched with `torch.func.vmap` as well as looped — the numbers are the same.

- `LocalSGD`: FedAvg's local SGD (McMahan et al. 2017) on the pooled support and query
  examples; with μ > 0 the FedProx proximal term μ/2·‖θ − θ_global‖² (Li et al. 2020).
- `LocalMeta`: FedMeta (Chen et al. 2018): local meta-updates θ ← θ − β·∇meta with any
  meta-learner (MAML, FOMAML, Reptile, Meta-SGD, ANIL) on the client's own episodes.
- Per-FedAvg lives in `perfedavg.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad

from fedmeta.data.base import TaskBatch
from fedmeta.meta.base import MetaLearner, Params, loss_for


class LocalProcedure(Protocol):
    def step(self, params: Params, anchor: Params, episodes: TaskBatch) -> Params: ...


@dataclass
class LocalSGD:
    model: nn.Module
    kind: str
    lr: float
    mu: float = 0.0
    class_weights: tuple[float, ...] | None = None

    def step(self, params: Params, anchor: Params, episodes: TaskBatch) -> Params:
        loss_fn = loss_for(self.kind, self.class_weights)
        x = torch.cat([episodes.xs.flatten(0, 1), episodes.xq.flatten(0, 1)])  # (examples, ...)
        y = torch.cat([episodes.ys.flatten(0, 1), episodes.yq.flatten(0, 1)])

        def loss(p: Params) -> Tensor:
            return loss_fn(functional_call(self.model, p, (x,)), y)

        g = grad(loss)(params)
        return {k: p - self.lr * (g[k] + self.mu * (p - anchor[k])) for k, p in params.items()}


@dataclass
class LocalMeta:
    learner: MetaLearner
    lr: float

    def step(self, params: Params, anchor: Params, episodes: TaskBatch) -> Params:
        _, g = self.learner.meta_gradient(params, episodes)
        return {k: p - self.lr * g[k] for k, p in params.items()}


def local_update(
    procedure: LocalProcedure, params: Params, episodes: TaskBatch, n_steps: Tensor
) -> Params:
    """Δ after `n_steps` (a 0-d tensor) of the procedure; episodes are (steps, tasks, ...)."""
    anchor, current = params, params
    for s in range(episodes.xs.shape[0]):
        batch = TaskBatch(episodes.xs[s], episodes.ys[s], episodes.xq[s], episodes.yq[s])
        new = procedure.step(current, anchor, batch)
        active = n_steps > s
        current = {k: torch.where(active, new[k], current[k]) for k in current}
    return {k: current[k] - anchor[k] for k in current}
