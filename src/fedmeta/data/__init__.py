"""Task distributions and federated partitions."""

from __future__ import annotations

from typing import Literal

from fedmeta.config import DataConfig
from fedmeta.data.base import TaskBatch, TaskDistribution
from fedmeta.data.sinusoid import Sinusoid


def make_tasks(cfg: DataConfig, split: Literal["train", "test"]) -> TaskDistribution:
    """The episodes of one meta-split for a data config (train and test never share classes)."""
    if cfg.name == "sinusoid":
        return Sinusoid(k_shot=cfg.k_shot, k_query=cfg.k_query)
    if cfg.name == "digits":
        from fedmeta.data.digits import Digits

        return Digits(split, cfg.n_way, cfg.k_shot, cfg.k_query, test_classes=tuple(cfg.test_classes))
    from fedmeta.data.omniglot import Omniglot

    return Omniglot.from_path(
        cfg.data_dir,
        split=split,
        n_way=cfg.n_way,
        k_shot=cfg.k_shot,
        k_query=cfg.k_query,
        rotations=cfg.rotations,
        test_alphabets=cfg.test_alphabets,
    )


__all__ = ["Sinusoid", "TaskBatch", "TaskDistribution", "make_tasks"]
