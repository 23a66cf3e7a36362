"""The parts a config names, built in one place for central and federated runs: the
network (`model.name`, "auto" resolved by `Config.model_name`) and the meta-learner."""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.config import Config
from fedmeta.meta import ALGORITHMS, MetaLearner
from fedmeta.models import build_model


def model_for(cfg: Config, x_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The network, initialised from `run.seed`."""
    torch.manual_seed(cfg.run.seed)
    return build_model(cfg.model_name, x_shape, n_outputs, hidden=cfg.model.hidden, filters=cfg.model.filters)


def learner_for(cfg: Config, model: nn.Module, kind: str, algorithm: str | None = None) -> MetaLearner:
    """`meta.algorithm`'s learner; `algorithm` overrides it (federated runs whose clients do
    not meta-learn are evaluated by MAML's adaptation, without a compiled query pass)."""
    meta = cfg.meta
    return ALGORITHMS[algorithm or meta.algorithm](
        model, kind, inner_steps=meta.inner_steps, inner_lr=meta.inner_lr, batching=meta.batching,
        compile_query=meta.compile_query and algorithm is None)
