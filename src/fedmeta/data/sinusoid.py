"""Sinusoid regression tasks, the toy problem of Finn et al. 2017 (MAML, section 5.1).

Each task is y = A sin(x - φ) with amplitude A ~ U[0.1, 5], phase φ ~ U[0, π], and
inputs x ~ U[-5, 5]; K support points and K query points are drawn per task.
Ranges are parameters so the federated sinusoid can hand each client a region of them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from fedmeta.data.base import TaskBatch


@dataclass(frozen=True)
class Sinusoid:
    k_shot: int = 10
    k_query: int = 10
    amplitude: tuple[float, float] = (0.1, 5.0)
    phase: tuple[float, float] = (0.0, math.pi)
    x_range: tuple[float, float] = (-5.0, 5.0)

    kind = "regression"
    n_outputs = 1
    x_shape = (1,)

    def sample_functions(self, n_tasks: int, generator: torch.Generator):
        """Amplitudes and phases, each (tasks,)."""
        u = torch.rand(2, n_tasks, generator=generator)
        amp = self.amplitude[0] + (self.amplitude[1] - self.amplitude[0]) * u[0]
        phase = self.phase[0] + (self.phase[1] - self.phase[0]) * u[1]
        return amp, phase

    def points(self, amp, phase, n: int, generator: torch.Generator):
        """x (tasks, n, 1) uniform over x_range and y = A sin(x - φ) of the same shape."""
        lo, hi = self.x_range
        x = lo + (hi - lo) * torch.rand(amp.shape[0], n, 1, generator=generator)
        return x, amp[:, None, None] * torch.sin(x - phase[:, None, None])

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        amp, phase = self.sample_functions(n_tasks, generator)
        xs, ys = self.points(amp, phase, self.k_shot, generator)
        xq, yq = self.points(amp, phase, self.k_query, generator)
        return TaskBatch(xs, ys, xq, yq)


def sample_regions(regions: list[Sinusoid], n_tasks: int, generators: list[torch.Generator]) -> TaskBatch:
    """Episodes of many sinusoid distributions that differ only in their amplitude and
    phase ranges, region i's from `generators[i]`: the same draws as
    `regions[i].sample(n_tasks, generators[i])`, bit for bit, with the arithmetic done in
    one go. Tensors gain a leading (regions,) axis."""
    first = regions[0]
    shot, query = n_tasks * first.k_shot, n_tasks * first.k_query
    # `sample`'s three draws in one: a stream's uniforms come in order, however many per call
    draws = torch.stack([torch.rand(2 * n_tasks + shot + query, generator=g) for g in generators])
    u = draws[:, : 2 * n_tasks].reshape(len(regions), 2, n_tasks).transpose(0, 1)  # (2, regions, tasks)
    xs_u = draws[:, 2 * n_tasks : 2 * n_tasks + shot].reshape(len(regions), n_tasks, first.k_shot, 1)
    xq_u = draws[:, 2 * n_tasks + shot :].reshape(len(regions), n_tasks, first.k_query, 1)

    def bounds(ranges: list[tuple[float, float]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each range's start and width as `sample`'s scalars become: float32, width in float64 first."""
        return (torch.tensor([[lo] for lo, _ in ranges], dtype=torch.float32),
                torch.tensor([[hi - lo] for lo, hi in ranges], dtype=torch.float32))

    (a0, da), (p0, dp) = bounds([r.amplitude for r in regions]), bounds([r.phase for r in regions])
    a, p = a0 + da * u[0], p0 + dp * u[1]  # (regions, tasks)
    lo, hi = first.x_range

    def points(uniform: torch.Tensor):
        x = lo + (hi - lo) * uniform
        return x, a[..., None, None] * torch.sin(x - p[..., None, None])

    (xs, ys), (xq, yq) = points(xs_u), points(xq_u)
    return TaskBatch(xs, ys, xq, yq)


def sample_regions_one_stream(regions: list[Sinusoid], n_tasks: int, generator: torch.Generator) -> TaskBatch:
    """`sample_regions` with every region's draws made together from one stream: the
    episodes of runs begun before each client drew from a stream of its own (their
    checkpoints resume with them)."""
    first = regions[0]
    amp = torch.tensor([r.amplitude for r in regions], dtype=torch.float32)  # (regions, 2)
    phase = torch.tensor([r.phase for r in regions], dtype=torch.float32)
    u = torch.rand(2, len(regions), n_tasks, generator=generator)
    a = amp[:, :1] + (amp[:, 1:] - amp[:, :1]) * u[0]  # (regions, tasks)
    p = phase[:, :1] + (phase[:, 1:] - phase[:, :1]) * u[1]
    lo, hi = first.x_range

    def points(k: int):
        x = lo + (hi - lo) * torch.rand(len(regions), n_tasks, k, 1, generator=generator)
        return x, a[..., None, None] * torch.sin(x - p[..., None, None])

    (xs, ys), (xq, yq) = points(first.k_shot), points(first.k_query)
    return TaskBatch(xs, ys, xq, yq)
