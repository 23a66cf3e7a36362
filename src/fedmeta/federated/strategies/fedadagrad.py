"""FedAdagrad (Reddi et al. 2021): v_t = v_{t-1} + Δ_t²."""

from dataclasses import dataclass

from torch import Tensor

from fedmeta.federated.strategies.fedopt import FedOpt


@dataclass
class FedAdagrad(FedOpt):
    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v + d2
