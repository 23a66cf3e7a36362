"""Few-shot handwritten digits from scikit-learn's bundled UCI optical digits (Alpaydin &
Kaynak 1998): 1,797 images of 8x8 pixels, 10 classes of about 180 each.

A small, offline stand-in for Omniglot: meta-train and meta-test use disjoint digit classes,
and episodes follow the same N-way K-shot protocol (Vinyals et al. 2016).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor

from fedmeta.data.base import TaskBatch
from fedmeta.data.episodes import (
    EpisodeIndices,
    check_episode_shape,
    episode_indices,
    to_task_batch,
)
from fedmeta.errors import DataError

N_CLASSES = 10


@cache
def _arrays() -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]  # (n, 1, 8, 8), pixel values 0..16
    return x, bunch.target.astype(np.int64)


def digits_arrays() -> tuple[Tensor, Tensor]:
    """All digits: x (n, 1, 8, 8) float32 in [0, 1] and y (n,) int64 in 0..9 (fresh copies)."""
    x, y = _arrays()
    return torch.from_numpy(x.copy()), torch.from_numpy(y.copy())


class Digits:
    """N-way K-shot episodes over the digit classes of one split; class c is digit classes[c]."""

    kind = "classification"
    x_shape = (1, 8, 8)

    def __init__(
        self,
        split: str = "train",
        n_way: int = 5,
        k_shot: int = 1,
        k_query: int = 15,
        test_classes: tuple[int, ...] = (5, 6, 7, 8, 9),
    ):
        if split not in ("train", "test"):
            raise DataError("data.split", split, "'train' or 'test'")
        held_out = set(test_classes)
        if not held_out <= set(range(N_CLASSES)) or not 0 < len(held_out) < N_CLASSES:
            raise DataError("data.test_classes", test_classes, "a non-empty proper subset of 0..9")
        self.classes = [c for c in range(N_CLASSES) if (c in held_out) == (split == "test")]
        x, y = _arrays()
        by_class = [np.flatnonzero(y == c) for c in self.classes]
        sizes = [len(rows) for rows in by_class]
        check_episode_shape(n_way, k_shot, k_query, len(self.classes), min(sizes), split)
        self.n_way, self.k_shot, self.k_query = n_way, k_shot, k_query
        self.n_outputs = n_way
        self._x = x
        self._sizes = torch.tensor(sizes)
        self._rows = np.zeros((len(sizes), max(sizes)), dtype=np.int64)  # (classes, longest)
        for c, rows in enumerate(by_class):
            self._rows[c, : len(rows)] = rows

    def rows(self, idx: EpisodeIndices) -> tuple[np.ndarray, np.ndarray]:
        """Rows of `digits_arrays()` behind an episode: support (tasks, n_way, k_shot), query."""
        classes = idx.classes.numpy()[..., None]
        return self._rows[classes, idx.support.numpy()], self._rows[classes, idx.query.numpy()]

    def sample_indices(self, n_tasks: int, generator: torch.Generator) -> EpisodeIndices:
        return episode_indices(
            self._sizes, n_tasks, self.n_way, self.k_shot, self.k_query, generator
        )

    def episodes(self, idx: EpisodeIndices) -> TaskBatch:
        support, query = self.rows(idx)
        return to_task_batch(self._x[np.concatenate([support, query], axis=-1)], self.k_shot)

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self.episodes(self.sample_indices(n_tasks, generator))
