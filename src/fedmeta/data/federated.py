"""Federated datasets: each client owns private data and produces episodes from it.

Two kinds of client, both `TaskDistribution`s with an `n_examples` weight:
- `ExampleClient` holds labelled examples; an episode is a support sample and a disjoint
  query sample of the client's own data, in the global label space: the client is the
  task (FedMeta, Chen et al. 2018; Per-FedAvg, Fallah et al. 2020).
- task-space clients (federated sinusoid, federated Omniglot) own a region of a task
  distribution and draw N-way K-shot or regression episodes from it.

`FederatedData` holds the training clients and the clients held out of training, on
which personalization (adaptation from the global model) is measured.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fedmeta.data.base import Kind, TaskBatch
from fedmeta.data.partition import dirichlet, shards
from fedmeta.data.sinusoid import Sinusoid
from fedmeta.errors import BadInput, ConfigError, shown


@dataclass(frozen=True)
class ExampleClient:
    x: Tensor  # (n, *x_shape)
    y: Tensor  # (n,) labels or (n, out) targets
    support: int
    query: int
    kind: Kind
    n_outputs: int
    per_class: bool = False  # K-shot: `support` and `query` examples of every class per episode

    @property
    def x_shape(self) -> tuple[int, ...]:
        return tuple(self.x.shape[1:])

    @property
    def n_examples(self) -> int:
        return self.x.shape[0]

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        if self.per_class:
            return self._per_class(n_tasks, generator)
        n, need = self.n_examples, self.support + self.query
        if n >= need:  # disjoint support and query, without replacement
            idx = torch.rand(n_tasks, n, generator=generator).argsort(dim=1)[:, :need]
        else:  # tiny clients: sample with replacement
            idx = torch.randint(n, (n_tasks, need), generator=generator)
        x, y = self.x[idx], self.y[idx]  # (tasks, need, ...)
        s = self.support
        return TaskBatch(x[:, :s], y[:, :s], x[:, s:], y[:, s:])


    def _per_class(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        """K-shot episodes: of each class, `support` and `query` disjoint examples (the client
        holds at least their sum of every class; `data/table.py` checks)."""
        need, parts = self.support + self.query, []
        for c in range(self.n_outputs):
            rows = (self.y == c).nonzero().squeeze(1)
            parts.append(rows[torch.rand(n_tasks, len(rows), generator=generator).argsort(dim=1)[:, :need]])
        idx = torch.stack(parts, 1)  # (tasks, classes, need)
        sup, qry = idx[:, :, : self.support].flatten(1), idx[:, :, self.support :].flatten(1)
        return TaskBatch(self.x[sup], self.y[sup], self.x[qry], self.y[qry])


@dataclass(frozen=True)
class WeightedTasks:
    """A task-space client: episodes from `tasks`, aggregation weight `n_examples`."""

    tasks: Any
    n_examples: int = 1

    def __getattr__(self, name: str) -> Any:  # kind, n_outputs, x_shape
        if name.startswith("__") or name == "tasks":  # copy/pickle probe before `tasks` exists
            raise AttributeError(name)
        return getattr(self.tasks, name)

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self.tasks.sample(n_tasks, generator)


@dataclass(frozen=True)
class FederatedData:
    train: list
    held_out: list
    kind: Kind
    n_outputs: int
    x_shape: tuple[int, ...]


def from_tensors(train: list[tuple[Tensor, Tensor]], held_out: list[tuple[Tensor, Tensor]] = (), *,
                 support_size: int, query_size: int) -> FederatedData:
    """Clients from their own examples, one `(x, y)` pair each: x (n, *x_shape); y (n,)
    integer labels (classification, classes 0..max) or (n, out) floats (regression). Each
    client's episodes are `support_size` support and `query_size` query rows of its own."""
    pairs = [*train, *held_out]
    if not train or any(len(p) != 2 or len(p[0]) != len(p[1]) for p in pairs):
        raise BadInput("train", f"{len(train)} training clients", "at least one; each client a pair (x, y) with as "
                                                                  "many rows in x as in y")
    labels = not torch.is_floating_point(pairs[0][1])
    kind: Kind = "classification" if labels else "regression"
    n_outputs = int(max(int(y.max()) for _, y in pairs)) + 1 if labels else int(pairs[0][1].shape[1])
    make = lambda x, y: ExampleClient(x, y, support_size, query_size, kind, n_outputs)  # noqa: E731
    return FederatedData([make(*p) for p in train], [make(*p) for p in held_out], kind, n_outputs,
                         tuple(pairs[0][0].shape[1:]))


def check_data(cfg: Any, data: Any, field: str) -> None:
    """A federated dataset given from Python (`fedmeta.data.federated.FederatedData`'s
    fields): training and held-out clients that sample `TaskBatch`es, its kind, output size
    and input shape; as many training clients as `federated.n_clients`. `field` names where
    it came from (the `data` argument, or `data.name`'s factory)."""
    accepted = ("an object with train and held_out (lists of clients with sample(n_tasks, generator)), "
                "kind ('classification' or 'regression'), n_outputs and x_shape: fedmeta.data.federated.FederatedData")
    fields = ("train", "held_out", "kind", "n_outputs", "x_shape")
    if isinstance(data, type) or not all(hasattr(data, f) for f in fields):
        raise BadInput(field, shown(data), accepted)
    if data.kind not in ("classification", "regression") or not isinstance(data.n_outputs, int) or data.n_outputs < 1:
        raise BadInput(f"{field}.kind", f"{data.kind!r}, n_outputs={data.n_outputs!r}", accepted)
    clients = [*data.train, *data.held_out]
    if not data.train or not all(callable(getattr(c, "sample", None)) for c in clients):
        raise BadInput(f"{field}.train", shown(data.train), accepted)
    n = cfg.federated.n_clients
    if len(data.train) != n:
        raise BadInput(f"{field}.train", f"{len(data.train)} clients", f"federated.n_clients = {n} training clients")
    try:
        batch = data.train[0].sample(1, torch.Generator().manual_seed(0))
        shape = tuple(batch.xs.shape[2:])
    except Exception as err:
        raise BadInput(f"{field}.train[0].sample", f"{type(err).__name__}: {err}", "a TaskBatch of (xs, ys, xq, yq), "
                                                                             "each with a task axis first") from None
    if shape != tuple(data.x_shape):
        raise BadInput(f"{field}.x_shape", tuple(data.x_shape), f"the shape of one example the clients sample: {shape}")


def _split_clients(clients: list, held_out: int, field: str = "federated.held_out_clients") -> tuple[list, list]:
    if not 0 <= held_out < len(clients):
        raise ConfigError(field, held_out, f"between 0 and {len(clients) - 1} (there are {len(clients)} clients)")
    return clients[: len(clients) - held_out], clients[len(clients) - held_out :]


def partition_examples(x: Tensor, y: Tensor, cfg: Any, generator: torch.Generator) -> list[Tensor]:
    total, part = cfg.n_clients + cfg.held_out_clients, cfg.partition
    if part.scheme == "dirichlet":
        return dirichlet(y, total, part.alpha, generator)
    if part.scheme == "shards":
        return shards(y, total, part.shards_per_client, generator)
    raise ConfigError("federated.partition.scheme", part.scheme, "'dirichlet' or 'shards' for this dataset")


def federated_digits(cfg: Any, generator: torch.Generator) -> FederatedData:
    """scikit-learn's digits split across clients with label skew."""
    from fedmeta.data.digits import digits_arrays

    x, y = digits_arrays()
    clients = [
        ExampleClient(x[i], y[i], cfg.partition.support_size, cfg.partition.query_size, "classification", 10)
        for i in partition_examples(x, y, cfg, generator)
    ]
    train, held = _split_clients(clients, cfg.held_out_clients)
    return FederatedData(train, held, "classification", 10, tuple(x.shape[1:]))


def synthetic(alpha: float, beta: float, n_clients: int, generator: torch.Generator, dim: int = 60, classes: int = 10) -> list[tuple[Tensor, Tensor]]:
    """Synthetic(α, β) of Li et al. 2020 (FedProx), after Shamir et al. 2014.

    Client k: u_k ~ N(0, α), B_k ~ N(0, β); W_k, b_k ~ N(u_k, 1); v_k ~ N(B_k, 1);
    x ~ N(v_k, Σ) with Σ = diag(j^-1.2); y = argmax(W_k x + b_k). Client sizes follow a
    power law (lognormal(4, 2) + 50, as in the paper's generator).
    """
    g = generator
    sizes = (torch.distributions.LogNormal(4.0, 2.0).icdf(torch.rand(n_clients, generator=g).clamp(1e-6, 1 - 1e-6)).long() + 50).clamp(max=5000)
    sigma = torch.arange(1, dim + 1, dtype=torch.float64) ** -1.2
    out = []
    for k in range(n_clients):
        u = math.sqrt(alpha) * torch.randn((), generator=g, dtype=torch.float64)
        bk = math.sqrt(beta) * torch.randn((), generator=g, dtype=torch.float64)
        w = u + torch.randn(classes, dim, generator=g, dtype=torch.float64)
        b = u + torch.randn(classes, generator=g, dtype=torch.float64)
        v = bk + torch.randn(dim, generator=g, dtype=torch.float64)
        x = v + sigma.sqrt() * torch.randn(int(sizes[k]), dim, generator=g, dtype=torch.float64)
        y = (x @ w.T + b).argmax(1)
        out.append((x.float(), y))
    return out


def federated_synthetic(cfg: Any, generator: torch.Generator) -> FederatedData:
    total = cfg.n_clients + cfg.held_out_clients
    clients = [
        ExampleClient(x, y, cfg.partition.support_size, cfg.partition.query_size, "classification", 10)
        for x, y in synthetic(cfg.partition.synthetic_alpha, cfg.partition.synthetic_beta, total, generator)
    ]
    train, held = _split_clients(clients, cfg.held_out_clients)
    return FederatedData(train, held, "classification", 10, (60,))


def federated_sinusoid(cfg: Any, data: Any, generator: torch.Generator) -> FederatedData:
    """Each client owns one cell of a grid over (amplitude, phase); cells are shuffled
    so held-out clients are unseen regions of the task space."""
    total = cfg.n_clients + cfg.held_out_clients
    rows = math.ceil(math.sqrt(total))
    cols = math.ceil(total / rows)
    amp_edges = np.linspace(0.1, 5.0, rows + 1)
    phase_edges = np.linspace(0.0, math.pi, cols + 1)
    cells = [(i, j) for i in range(rows) for j in range(cols)]
    order = torch.randperm(len(cells), generator=generator)[:total]
    base = Sinusoid(k_shot=data.k_shot, k_query=data.k_query)
    clients = [
        WeightedTasks(replace(base, amplitude=(amp_edges[i], amp_edges[i + 1]), phase=(phase_edges[j], phase_edges[j + 1])))
        for i, j in (cells[int(c)] for c in order)
    ]
    train, held = _split_clients(clients, cfg.held_out_clients)
    return FederatedData(train, held, "regression", 1, (1,))


def federated_omniglot(cfg: Any, data: Any, generator: torch.Generator) -> FederatedData:
    """One client per (alphabet, group of drawers): the natural owners of Omniglot
    drawings. Training clients hold the meta-train alphabets; held-out clients hold the
    held-out alphabets (unseen characters and drawers). A single drawer drew each
    character once, so a group of `drawers_per_client` drawers is the smallest owner that
    can form support and query sets of the same character."""
    from fedmeta.data.omniglot import (
        Omniglot,
        OmniglotImages,
        default_test_alphabets,
        load_omniglot,
    )

    images = load_omniglot(data.data_dir)
    test = default_test_alphabets(images) if data.test_alphabets is None else data.test_alphabets
    per = cfg.partition.drawers_per_client
    if per < data.k_shot + data.k_query or 20 % per:
        raise ConfigError("federated.partition.drawers_per_client", per, f"a divisor of 20 that is at least k_shot + k_query = {data.k_shot + data.k_query}")
    train, held = [], []
    for alphabet in images.alphabet_names():
        rows = [i for i, a in enumerate(images.alphabets) if a == alphabet]
        for g in range(20 // per):
            sub = OmniglotImages(
                images.images[rows][:, g * per : (g + 1) * per],
                [alphabet] * len(rows),
                [images.characters[i] for i in rows],
                [images.sets[i] for i in rows],
            )
            tasks = Omniglot(sub, "train", data.n_way, data.k_shot, data.k_query, data.rotations, test_alphabets=[])
            (held if alphabet in test else train).append(WeightedTasks(tasks, len(rows) * per))
    if cfg.n_clients > len(train):
        raise ConfigError("federated.n_clients", cfg.n_clients,
                          f"at most {len(train)}: the (alphabet, {per}-drawer group) owners of the training alphabets")
    order = torch.randperm(len(train), generator=generator).tolist()
    train = [train[i] for i in order][: cfg.n_clients]
    return FederatedData(train, held, "classification", data.n_way, (1, 28, 28))


def make_federated(cfg: Any, generator: torch.Generator) -> FederatedData:
    """The clients of a config's federated dataset (`data.name` picks it)."""
    name = cfg.data.name
    if name == "digits":
        return federated_digits(cfg.federated, generator)
    if name == "synthetic":
        return federated_synthetic(cfg.federated, generator)
    if name == "table":  # the user's own file: a client per owner, no random partition
        from fedmeta.data.table import federated_table

        return federated_table(cfg.data, cfg.federated)
    if name == "sinusoid":
        return federated_sinusoid(cfg.federated, cfg.data, generator)
    if name == "omniglot":
        return federated_omniglot(cfg.federated, cfg.data, generator)
    return plugin_data(cfg, generator)


def plugin_data(cfg: Any, generator: torch.Generator) -> FederatedData:
    """The clients a dataset plugin's factory (`data.name`: an import path or an entry point
    `dataset.<name>`) makes of the config and the run's data generator, checked as
    `fedmeta.run(data=...)` checks them."""
    from fedmeta.federated.registry import load_plugin

    factory = load_plugin("dataset", cfg.data.name, "data.name")
    try:
        data = factory(cfg, generator)
    except BadInput:
        raise
    except Exception as err:
        raise BadInput("data.name", cfg.data.name, f"a factory that builds the clients (it raised "
                                                   f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    try:
        check_data(cfg, data, "data")
    except BadInput as err:
        raise BadInput("data.name", cfg.data.name, f"a factory whose clients fit ({err.field} = {err.value}: "
                                                   f"{err.accepted})") from None
    return data
