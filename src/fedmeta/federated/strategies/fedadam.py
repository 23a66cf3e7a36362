"""FedAdam (Reddi et al. 2021): v_t = β2·v_{t-1} + (1 − β2)·Δ_t²."""

from dataclasses import dataclass

from torch import Tensor

from fedmeta.federated.strategies.fedopt import FedOpt


@dataclass
class FedAdam(FedOpt):
    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return self.beta2 * v + (1 - self.beta2) * d2
