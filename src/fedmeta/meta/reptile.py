"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms").

Each task runs k steps of SGD from the initialisation θ to φ on all of its data (support
and query pooled); the meta-update moves θ toward the adapted weights,
θ ← θ + ε · mean(φ − θ). We return the pseudo-gradient g = θ − mean(φ), so the outer
optimizer (plain SGD with learning rate ε reproduces the paper; Adam also works) applies it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import vmap

from fedmeta.data.base import TaskBatch
from fedmeta.meta.base import MetaLearner, Params


@dataclass
class Reptile(MetaLearner):
    first_order: bool = True

    def _adapted(self, meta: Params, xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor):
        x, y = torch.cat([xs, xq]), torch.cat([ys, yq])
        phi = self.adapt(meta, x, y)
        return phi, self.loss(self.forward(phi, xq), yq)

    def meta_gradient(self, meta: Params, batch: TaskBatch) -> tuple[Tensor, Params]:
        parts = (batch.xs, batch.ys, batch.xq, batch.yq)
        if self.batching == "vmap":
            phi, losses = vmap(self._adapted, in_dims=(None, 0, 0, 0, 0))(meta, *parts)
            mean_phi = {k: v.mean(0) for k, v in phi.items()}
        else:
            results = [self._adapted(meta, *task) for task in zip(*parts)]
            mean_phi = {k: torch.stack([r[0][k] for r in results]).mean(0) for k in meta}
            losses = torch.stack([r[1] for r in results])
        grads = {k: (meta[k] - mean_phi[k]).detach() for k in meta}
        return losses.mean().detach(), grads
