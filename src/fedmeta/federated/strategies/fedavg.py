"""FedAvg (McMahan et al. 2017, "Communication-Efficient Learning of Deep Networks from
Decentralized Data"): the new global model is θ + η·Δ̄, Δ̄ the example-weighted mean of
client updates; η = 1 is the paper's algorithm."""

from __future__ import annotations

from dataclasses import dataclass

from fedmeta.federated.strategies.base import State
from fedmeta.meta.base import Params


@dataclass
class FedAvg:
    lr: float = 1.0

    def init(self, params: Params) -> State:
        return {}

    def apply(self, params: Params, delta: Params, state: State) -> tuple[Params, State]:
        return {k: params[k] + self.lr * delta[k] for k in params}, state
