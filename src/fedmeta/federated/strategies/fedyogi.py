"""FedYogi (Reddi et al. 2021, after Zaheer et al. 2018's Yogi):
v_t = v_{t-1} − (1 − β2)·Δ_t²·sign(v_{t-1} − Δ_t²)."""

from dataclasses import dataclass

from torch import Tensor

from fedmeta.federated.strategies.fedopt import FedOpt


@dataclass
class FedYogi(FedOpt):
    def second_moment(self, v: Tensor, d2: Tensor) -> Tensor:
        return v - (1 - self.beta2) * d2 * (v - d2).sign()
