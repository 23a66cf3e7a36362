"""The one shape every task distribution produces: a batch of episodes with a task axis.

An episode (task) has a support set, used to adapt, and a query set, used to score the
adapted model (Finn et al. 2017; Vinyals et al. 2016). Distributions draw from a
`torch.Generator` so a run is reproducible and its sampling state checkpointable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import Tensor

Kind = Literal["regression", "classification"]


@dataclass(frozen=True)
class TaskBatch:
    """Episodes stacked on a leading task axis.

    Classification: xs (tasks, n_way*k_shot, C, H, W), ys (tasks, n_way*k_shot) int64 labels
    0..n_way-1, permuted per episode. Regression: xs (tasks, k, in), ys (tasks, k, out).
    """

    xs: Tensor
    ys: Tensor
    xq: Tensor
    yq: Tensor

    @property
    def n_tasks(self) -> int:
        return self.xs.shape[0]

    def task(self, i: int) -> TaskBatch:
        """Episode i, keeping a task axis of length 1."""
        return TaskBatch(*(t[i : i + 1] for t in (self.xs, self.ys, self.xq, self.yq)))


class TaskDistribution(Protocol):
    """Anything that samples episodes: sinusoid, Omniglot, digits, a client's private data."""

    kind: Kind
    n_outputs: int  # regression output size or number of ways
    x_shape: tuple[int, ...]  # shape of one input example

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch: ...
