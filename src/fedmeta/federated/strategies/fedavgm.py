"""FedAvgM (Hsu, Qi & Brown 2019, "Measuring the Effects of Non-Identical Data
Distribution for Federated Visual Classification"): server momentum on the mean update,
v ← β·v + Δ̄, θ ← θ + η·v."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedmeta.federated.strategies.base import State
from fedmeta.meta.base import Params


@dataclass
class FedAvgM:
    lr: float = 1.0
    momentum: float = 0.9

    def init(self, params: Params) -> State:
        return {"v": {k: torch.zeros_like(p) for k, p in params.items()}}

    def apply(self, params: Params, delta: Params, state: State) -> tuple[Params, State]:
        v = {k: self.momentum * state["v"][k] + delta[k] for k in params}
        return {k: params[k] + self.lr * v[k] for k in params}, {"v": v}
