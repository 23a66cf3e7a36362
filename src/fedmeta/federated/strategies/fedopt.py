"""Adaptive server optimizers of Reddi et al. 2021, "Adaptive Federated Optimization"
(Algorithm 2). With Δ_t the mean client update:

    m_t = β1·m_{t-1} + (1 − β1)·Δ_t
    v_t = second_moment(v_{t-1}, Δ_t²)      (FedAdagrad / FedAdam / FedYogi differ only here)
    θ_{t+1} = θ_t + η · m_t / (√v_t + τ)

v starts at τ² as in the paper. Subclasses live one per file.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from fedmeta.federated.strategies.base import State
from fedmeta.meta.base import Params


@dataclass
class FedOpt:
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        raise NotImplementedError

    def init(self, params: Params) -> State:
        return {
            "m": {k: torch.zeros_like(p) for k, p in params.items()},
            "v": {k: torch.full_like(p, self.tau**2) for k, p in params.items()},
        }

    def apply(self, params: Params, delta: Params, state: State) -> tuple[Params, State]:
        m = {k: self.beta1 * state["m"][k] + (1 - self.beta1) * delta[k] for k in params}
        v = {k: self.second_moment(state["v"][k], delta[k] ** 2) for k in params}
        new = {k: params[k] + self.lr * m[k] / (v[k].sqrt() + self.tau) for k in params}
        return new, {"m": m, "v": v}
