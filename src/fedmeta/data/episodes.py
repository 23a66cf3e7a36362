"""N-way K-shot episode sampling over a pool of labelled classes (Vinyals et al. 2016).

An episode draws `n_way` distinct classes, then `k_shot` support and `k_query` query
examples per class, all distinct. The classes are drawn in a uniformly random order and
the j-th drawn class gets label j, so the class→label mapping is fresh every episode
(Santoro et al. 2016; Finn et al. 2017). Everything is vectorised over tasks and drawn
from the caller's `torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from fedmeta.data.base import TaskBatch
from fedmeta.errors import DataError


@dataclass(frozen=True)
class EpisodeIndices:
    """Where each episode's examples come from, before any pixels are gathered.

    classes (tasks, n_way): class ids of the split, column j is label j.
    support (tasks, n_way, k_shot), query (tasks, n_way, k_query): example positions
    within each class, disjoint between support and query.
    """

    classes: Tensor
    support: Tensor
    query: Tensor


def check_episode_shape(
    n_way: int, k_shot: int, k_query: int, n_classes: int, min_class_size: int, split: str
) -> None:
    """Raise `DataError` naming the field when the split cannot provide such episodes."""
    for field, value in (("data.n_way", n_way), ("data.k_shot", k_shot), ("data.k_query", k_query)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise DataError(field, value, "a positive integer")
    if n_way > n_classes:
        raise DataError("data.n_way", n_way, f"at most {n_classes} (classes in the {split} split)")
    if k_shot + k_query > min_class_size:
        raise DataError(
            "data.k_query",
            k_query,
            f"k_shot + k_query at most {min_class_size} (examples in the smallest class); "
            f"k_shot is {k_shot}",
        )


def episode_indices(
    class_sizes: Tensor,
    n_tasks: int,
    n_way: int,
    k_shot: int,
    k_query: int,
    generator: torch.Generator,
) -> EpisodeIndices:
    """Draw classes and example positions for `n_tasks` episodes; class_sizes is (classes,)."""
    n_classes = class_sizes.numel()
    classes = torch.rand(n_tasks, n_classes, generator=generator).argsort(dim=1)[:, :n_way]
    sizes = class_sizes[classes]  # (tasks, n_way)
    longest = int(class_sizes.max())
    keys = torch.rand(n_tasks, n_way, longest, generator=generator)
    keys = keys.masked_fill(torch.arange(longest) >= sizes[..., None], float("inf"))
    picks = keys.argsort(dim=-1)[..., : k_shot + k_query]  # (tasks, n_way, k_shot + k_query)
    return EpisodeIndices(classes, picks[..., :k_shot], picks[..., k_shot:])


def to_task_batch(x: np.ndarray, k_shot: int) -> TaskBatch:
    """Split gathered examples (tasks, n_way, k_shot + k_query, *x_shape) into a TaskBatch.

    Split in numpy: on small CPUs torch's intra-op threads cost milliseconds per copy.
    """
    n_tasks, n_way, k_total = x.shape[:3]
    k_query = k_total - k_shot
    xs = np.ascontiguousarray(x[:, :, :k_shot]).reshape(n_tasks, n_way * k_shot, *x.shape[3:])
    xq = np.ascontiguousarray(x[:, :, k_shot:]).reshape(n_tasks, n_way * k_query, *x.shape[3:])
    labels = torch.arange(n_way)
    ys = labels.repeat_interleave(k_shot).repeat(n_tasks, 1)  # (tasks, n_way*k_shot)
    yq = labels.repeat_interleave(k_query).repeat(n_tasks, 1)  # (tasks, n_way*k_query)
    return TaskBatch(torch.from_numpy(xs), ys, torch.from_numpy(xq), yq)
