"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly for Few-Shot
Learning").

Like MAML, but the inner update is φ = θ − α ∘ ∇L(θ) with a learned learning rate α of
the same shape as each parameter; α is a meta-parameter (stored as `inner_lr.<name>`),
initialised to the configured inner learning rate and trained by the outer optimizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmeta.meta.base import MetaLearner, Params

PREFIX = "inner_lr."


@dataclass
class MetaSGD(MetaLearner):
    def init(self, params: Params) -> Params:
        rates = {PREFIX + k: torch.full_like(v, self.inner_lr) for k, v in params.items()}
        return {**params, **rates}

    def network(self, meta: Params) -> Params:
        return {k: v for k, v in meta.items() if not k.startswith(PREFIX)}

    def inner_step(self, meta: Params, fast: Params, grads: Params) -> Params:
        return {k: fast[k] - meta[PREFIX + k] * grads[k] for k in fast}
