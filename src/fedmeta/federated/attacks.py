"""Malicious-client behaviours, to test robust aggregation: each turns an honest update Δ
into the update a Byzantine client sends.

Every attack is called as `attack(delta, honest, generator) -> update`, where `delta` is
the client's own honest update, `honest` the batch of the round's honest updates (used
only by "a little is enough") and `generator` the only source of randomness, so an
attack is reproducible. Built from the `[federated.attack]` section by `build(ATTACKS,
cfg.federated.attack.name, cfg.federated.attack)` (fedmeta.federated.registry), or by
`make_attack(name, **options)`; each class's fields are the section's keys it takes.

- `SignFlip`: −s·Δ (the sign-flipping attack of Li, Xu, Chen, Giannakis & Ling, "RSA:
  Byzantine-Robust Stochastic Aggregation Methods", AAAI 2019).
- `Scaling`: γ·Δ, the boosting step of model replacement (Bagdasaryan, Veit, Hua,
  Estrin & Shmatikov, "How To Backdoor Federated Learning", AISTATS 2020), where γ = n/η
  makes one client's update replace the global model.
- `GaussianNoise`: Δ + N(0, σ²I) (Gaussian Byzantine vectors as in Blanchard et al.,
  NeurIPS 2017).
- `LittleIsEnough`: μ − z·σ coordinate-wise, from the honest updates' mean μ and
  standard deviation σ (Baruch, Baruch & Goldberg, "A Little Is Enough: Circumventing
  Defenses For Distributed Learning", NeurIPS 2019). By default z is the paper's z_max
  for n clients of which f are Byzantine: s = ⌊n/2 + 1⌋ − f, z = Φ⁻¹((n − s)/n), with n
  = f + the number of honest updates passed in. f is the attack's own
  `federated.attack.byzantine_clients` (what the attackers assume), not the f that a
  robust rule is told to tolerate (`federated.robust.byzantine_clients`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from scipy.stats import norm

from fedmeta.errors import BadInput
from fedmeta.federated.registry import Registry, build
from fedmeta.federated.robust.base import check_count, check_non_negative, check_positive
from fedmeta.meta.base import Params


class Attack(Protocol):
    def __call__(self, delta: Params, honest: list[Params], generator: torch.Generator) -> Params: ...


@dataclass(frozen=True)
class SignFlip:
    scale: float = 1.0  # s

    def __post_init__(self) -> None:
        check_positive("federated.attack.scale", self.scale)

    def __call__(self, delta: Params, honest: list[Params], generator: torch.Generator) -> Params:
        return {k: -self.scale * v for k, v in delta.items()}


@dataclass(frozen=True)
class Scaling:
    scale: float = 10.0  # γ

    def __post_init__(self) -> None:
        check_positive("federated.attack.scale", self.scale)

    def __call__(self, delta: Params, honest: list[Params], generator: torch.Generator) -> Params:
        return {k: self.scale * v for k, v in delta.items()}


@dataclass(frozen=True)
class GaussianNoise:
    noise_std: float = 1.0  # σ

    def __post_init__(self) -> None:
        check_non_negative("federated.attack.noise_std", self.noise_std)

    def __call__(self, delta: Params, honest: list[Params], generator: torch.Generator) -> Params:
        return {k: v + self.noise_std * torch.randn(v.shape, generator=generator, dtype=v.dtype)
                for k, v in delta.items()}


def little_is_enough_z(clients: int, byzantine: int) -> float:
    """Baruch et al.'s z_max: s = ⌊n/2 + 1⌋ − f non-Byzantine clients are needed for a
    majority; z = Φ⁻¹((n − s)/n) keeps the attack inside the spread of that many."""
    s = math.floor(clients / 2 + 1) - byzantine
    if not 0 < s < clients:
        raise BadInput("federated.attack.byzantine_clients", byzantine,
                       f"1 <= f <= {clients // 2} for 'a little is enough' with n = {clients} clients")
    return float(norm.ppf((clients - s) / clients))


@dataclass(frozen=True)
class LittleIsEnough:
    byzantine_clients: int = 1  # f the attackers assume
    z: float | None = None  # None: the paper's z_max for n and f

    def __post_init__(self) -> None:
        check_count("federated.attack.byzantine_clients", self.byzantine_clients, 1)
        if self.z is not None:
            check_positive("federated.attack.z", self.z)

    def __call__(self, delta: Params, honest: list[Params], generator: torch.Generator) -> Params:
        if not honest:
            raise BadInput("federated.attack.byzantine_clients", self.byzantine_clients,
                           "fewer Byzantine clients than clients per round: the attack needs honest updates")
        z = self.z
        if z is None:
            z = little_is_enough_z(len(honest) + self.byzantine_clients, self.byzantine_clients)
        out = {}
        for k, v in delta.items():
            stacked = torch.stack([h[k].to(torch.float64) for h in honest])  # (honest, *shape)
            std, mean = torch.std_mean(stacked, dim=0, correction=0)
            out[k] = (mean - z * std).to(v.dtype)
        return out


ATTACKS = Registry("federated.attack", "name", {
    "sign_flip": SignFlip,
    "scaling": Scaling,
    "gaussian": GaussianNoise,
    "little_is_enough": LittleIsEnough,
})


def make_attack(name: str, **options: Any) -> Attack:
    """The attack `name` (a key of ATTACKS) with keyword options (keys of [federated.attack])."""
    return build(ATTACKS, name, options)


__all__ = ["ATTACKS", "Attack", "GaussianNoise", "LittleIsEnough", "Scaling", "SignFlip",
           "little_is_enough_z", "make_attack"]
