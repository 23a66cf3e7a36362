"""Splitting a labelled dataset across clients.

- `dirichlet`: label skew; each class is divided among clients in proportions drawn from
  Dir(α) (Hsu, Qi & Brown 2019). Small α: few classes per client; large α: near IID.
- `shards`: sort by label, cut into equal shards, deal `shards_per_client` to each client
  (McMahan et al. 2017's pathological non-IID split).
- `natural`: one client per value of a grouping key (a writer, a drawer, a hospital).

Each returns one index tensor per client, drawn from the caller's generator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from fedmeta.errors import ConfigError


def dirichlet(labels: Tensor, n_clients: int, alpha: float, generator: torch.Generator, min_size: int = 2) -> list[Tensor]:
    if alpha <= 0:
        raise ConfigError("federated.partition.alpha", alpha, "a positive Dirichlet concentration")
    if n_clients * min_size > labels.numel():
        raise ConfigError("federated.n_clients", n_clients, f"at most {labels.numel() // min_size} for {labels.numel()} examples")
    conc = torch.full((n_clients,), float(alpha), dtype=torch.float64)
    for _ in range(1000):  # redraw until every client has min_size examples, as is customary
        parts: list[list[Tensor]] = [[] for _ in range(n_clients)]
        for c in labels.unique():
            idx = (labels == c).nonzero().squeeze(1)
            idx = idx[torch.randperm(idx.numel(), generator=generator)]
            props = _dirichlet_sample(conc, generator)
            cuts = (props.cumsum(0) * idx.numel()).round().long().clamp(max=idx.numel())
            for i, chunk in enumerate(torch.tensor_split(idx, cuts[:-1])):
                parts[i].append(chunk)
        out = [torch.cat(p).sort().values for p in parts]
        if min(p.numel() for p in out) >= min_size:
            return out
    raise ConfigError("federated.partition.alpha", alpha, f"a larger value: clients kept getting fewer than {min_size} examples")


def _dirichlet_sample(conc: Tensor, generator: torch.Generator) -> Tensor:
    """Dir(conc) via normalised Gamma draws (Marsaglia–Tsang through torch's sampler)."""
    # torch.distributions does not take a Generator; derive a seeded one from it instead.
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        g = torch.distributions.Gamma(conc, torch.ones_like(conc)).sample()
    return g / g.sum()


def shards(labels: Tensor, n_clients: int, shards_per_client: int, generator: torch.Generator) -> list[Tensor]:
    n_shards = n_clients * shards_per_client
    if n_shards > labels.numel():
        raise ConfigError("federated.partition.shards_per_client", shards_per_client, f"at most {labels.numel() // n_clients} for {n_clients} clients")
    order = torch.argsort(labels, stable=True)
    pieces = torch.tensor_split(order, n_shards)
    deal = torch.randperm(n_shards, generator=generator).reshape(n_clients, shards_per_client)
    return [torch.cat([pieces[int(s)] for s in row]).sort().values for row in deal]


def natural(groups: list) -> list[Tensor]:
    """One client per distinct group key, in order of first appearance."""
    keys: dict = {}
    for i, g in enumerate(groups):
        keys.setdefault(g, []).append(i)
    return [torch.tensor(v) for v in keys.values()]
