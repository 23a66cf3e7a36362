"""The first client step: each client's local procedure, from the global parameters and
its own data to its update Δ = θ_local − θ.

`Training.deltas` runs it for a batch of clients. Clients sharing an architecture and
procedure are batched with `torch.func.vmap` (in chunks) or looped — the numbers are the
same — by the measured rule of `fedmeta.meta.base.batching_for` ("auto": vmap for nets
without convolutions). Under example-level DP each client runs DP-SGD on its own Poisson
samples (`private_client.py`), looped. A client whose procedure raises is reported as its
exception, so one bad client never sinks the others.

On a device (`run.device`), the round's θ is copied there once, the episodes (sampled on
the CPU from the same generators) go there once per chunk of clients (per client when
looped), and the updates come back to the CPU, where the client pipeline runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import vmap

from fedmeta.build import class_weights
from fedmeta.config import Config
from fedmeta.data.base import TaskBatch
from fedmeta.data.sinusoid import Sinusoid, sample_regions, sample_regions_one_stream
from fedmeta.device import CPU, batch_to, device_of, to_cpu, to_device
from fedmeta.federated.client import LocalMeta, LocalSGD, local_update
from fedmeta.federated.perfedavg import PerFedAvg
from fedmeta.federated.private_client import PrivateLocal
from fedmeta.meta import MetaLearner
from fedmeta.meta.base import batching_for
from fedmeta.params import Params, PerClient, Stacked

Deltas = PerClient  # client -> its Δ (Params) or the exception it raised
FIELDS = ("xs", "ys", "xq", "yq")


class Episodes(Mapping[int, tuple[TaskBatch, int]]):
    """A round's episodes: client -> (its TaskBatch of (steps, tasks, ...), its step count).
    Sinusoid regions' come as one batch with a leading clients axis, which a vmapped chunk
    of consecutive clients slices instead of stacking their views again."""

    def __init__(self, ids: list[int], steps: list[int], each: dict[int, TaskBatch] | None = None,
                 stacked: TaskBatch | None = None):
        self.ids, self.steps, self.each, self.stacked = ids, steps, each, stacked
        self.index = {c: i for i, c in enumerate(ids)}

    def __getitem__(self, c: int) -> tuple[TaskBatch, int]:
        i = self.index[c]
        if self.each is not None:
            return self.each[c], self.steps[i]
        return TaskBatch(*(getattr(self.stacked, f)[i] for f in FIELDS)), self.steps[i]

    def __iter__(self) -> Iterator[int]:
        return iter(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def batch(self, ids: list[int]) -> tuple[TaskBatch, list[int]]:
        """The episodes of `ids` stacked (clients, steps, tasks, ...), and their step counts."""
        first = self.index[ids[0]] if ids else 0
        if self.stacked is not None and ids == self.ids[first : first + len(ids)]:
            part = slice(first, first + len(ids))
            return TaskBatch(*(getattr(self.stacked, f)[part] for f in FIELDS)), self.steps[part]
        return (TaskBatch(*(torch.stack([getattr(self[c][0], f) for c in ids]) for f in FIELDS)),
                [self.steps[self.index[c]] for c in ids])


def make_procedure(cfg: Config, model: nn.Module, kind: str, learner: MetaLearner) -> Any:
    """The local procedure `federated.clients.procedure` names (see `client.py`, `perfedavg.py`)."""
    clients = cfg.federated.clients
    mu = clients.mu if clients.procedure == "fedprox" else 0.0
    weights = class_weights(cfg)
    if cfg.privacy.dp == "example":
        dp = cfg.privacy
        return PrivateLocal(model, kind, clients.lr, sample_rate=dp.example_sample_rate, clip_norm=dp.clip_norm,
                            noise_multiplier=dp.noise_multiplier, mu=mu,
                            learner=learner if clients.procedure == "fedmeta" else None, class_weights=weights)
    if clients.procedure == "fedmeta":
        return LocalMeta(learner, clients.lr)
    if clients.procedure == "perfedavg":
        return PerFedAvg(model, kind, cfg.meta.inner_lr, clients.lr, clients.perfedavg_variant, weights)
    return LocalSGD(model, kind, clients.lr, mu, weights)


@dataclass
class Training:
    procedure: Any
    clients: Sequence[Any]  # client datasets, by client id
    local_steps: int
    local_steps_min: int
    tasks_per_step: int
    batching: str  # "vmap" or "loop"
    chunk: int
    device: torch.device = CPU  # where the local procedures compute (the network's device)

    @classmethod
    def from_config(cls, cfg: Config, model: nn.Module, kind: str, learner: MetaLearner, clients: Sequence[Any]) -> Training:
        mine = cfg.federated.clients
        batching = mine.batching if mine.batching != "auto" else batching_for(model)
        return cls(make_procedure(cfg, model, kind, learner), clients, mine.local_steps,
                   mine.local_steps_min or mine.local_steps, mine.tasks_per_step, batching, mine.chunk, device_of(model))

    @property
    def private(self) -> bool:
        return isinstance(self.procedure, PrivateLocal)

    def event(self) -> dict[str, Any] | None:
        """Example-level DP's cost of one round (None: no noise added here)."""
        if not self.private or self.procedure.noise_multiplier == 0:
            return None
        return self.procedure.round_steps(self.local_steps)

    def steps(self, n: int, gen: torch.Generator) -> torch.Tensor:
        """Each of n clients' local step count, uniform in [local_steps_min, local_steps]."""
        return torch.randint(self.local_steps_min, self.local_steps + 1, (n,), generator=gen)

    def deltas(self, ids: list[int], params: Params, gen: torch.Generator,
               noise: Callable[[int], np.random.Generator | None],
               stream: Callable[[int], torch.Generator] | None = None) -> Deltas:
        """Each client's Δ on the CPU (or the exception it raised), a vmapped chunk's held
        `Stacked`. `params` (on the CPU) is copied to the device once; `noise(c)`: client
        c's DP noise source; `stream(c)`: client c's episode stream (default: `gen` for
        every client)."""
        params = to_device(params, self.device)
        out = PerClient()
        if self.private:
            results = []
            for c, n in zip(ids, self.steps(len(ids), gen).tolist(), strict=True):
                try:
                    results.append(to_cpu(self.procedure.run(params, self.clients[c], n, noise(c))))
                except Exception as err:  # a failing client is dropped from the round
                    results.append(err)
            out.add(ids, results)
            return out
        work = self.episodes(ids, gen, stream)
        if self.batching == "loop":
            out.add(ids, self._looped(ids, params, work))
            return out
        for i in range(0, len(ids), self.chunk):
            part = ids[i : i + self.chunk]
            try:
                out.add(part, self._vmapped(part, params, work))
            except Exception:  # one bad client must not sink the others: retry one by one
                out.add(part, self._looped(part, params, work))
        return out

    def episodes(self, ids: list[int], gen: torch.Generator,
                 stream: Callable[[int], torch.Generator] | None = None) -> Episodes:
        """Every client's episodes (steps, tasks, ...) and step count, each client's from
        `stream(c)` as on its own machine (default: `gen`). Sinusoid clients make the same
        draws with the arithmetic done in one go (`sample_regions`; per-client arithmetic
        was a third of a 1000-client round); without streams (runs begun before clients had
        their own) all regions' draws come from `gen` together, as those runs drew them."""
        shape = (self.local_steps, self.tasks_per_step)
        gens = [gen if stream is None else stream(c) for c in ids]
        tasks = [getattr(self.clients[c], "tasks", None) for c in ids]
        if not ids or not all(type(t) is Sinusoid and (t.k_shot, t.k_query, t.x_range) ==
                              (tasks[0].k_shot, tasks[0].k_query, tasks[0].x_range) for t in tasks):
            each, steps = {}, []
            for c, g in zip(ids, gens, strict=True):
                steps.append(int(self.steps(1, g)))
                b = self.clients[c].sample(shape[0] * shape[1], g)
                each[c] = TaskBatch(*(t.reshape(*shape, *t.shape[1:]) for t in (b.xs, b.ys, b.xq, b.yq)))
            return Episodes(ids, steps, each=each)
        if stream is None:
            steps = self.steps(len(ids), gen).tolist()
            b = sample_regions_one_stream(tasks, shape[0] * shape[1], gen)
        else:
            steps = [int(self.steps(1, g)) for g in gens]  # each stream: its step count, then its episodes
            b = sample_regions(tasks, shape[0] * shape[1], gens)
        return Episodes(ids, steps, stacked=TaskBatch(*(t.reshape(len(ids), *shape, *t.shape[2:])
                                                        for t in (b.xs, b.ys, b.xq, b.yq))))

    def _vmapped(self, ids: list[int], params: Params, work: Episodes) -> Stacked:
        eps, steps = work.batch(ids)
        eps, steps = batch_to(eps, self.device), torch.tensor(steps, device=self.device)

        def one(xs, ys, xq, yq, n):  # a client's Δ from its episodes (steps, tasks, ...)
            return local_update(self.procedure, params, TaskBatch(xs, ys, xq, yq), n)

        deltas = vmap(one)(eps.xs, eps.ys, eps.xq, eps.yq, steps)  # each (clients, *shape)
        return Stacked(to_cpu({k: v.detach() for k, v in deltas.items()}))  # one transfer per tensor

    def _looped(self, ids: list[int], params: Params, work: Episodes) -> list[Params | Exception]:
        out: list[Params | Exception] = []
        for c in ids:
            try:
                episodes, n = batch_to(work[c][0], self.device), torch.tensor(work[c][1], device=self.device)
                out.append(to_cpu({k: v.detach() for k, v in local_update(self.procedure, params, episodes, n).items()}))
            except Exception as err:  # a failing client is dropped from the round
                out.append(err)
        return out
