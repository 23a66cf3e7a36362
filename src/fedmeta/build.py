"""The parts a config names, built in one place for central and federated runs: the
network (`model.name`, "auto" resolved by `Config.model_name`) and the meta-learner."""

from __future__ import annotations

import torch
from torch import nn

from fedmeta.config import Config
from fedmeta.config.sections import MODEL_NAMES
from fedmeta.errors import BadInput
from fedmeta.meta import ALGORITHMS, MetaLearner
from fedmeta.models import build_model


def model_for(cfg: Config, x_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """The network, initialised from `run.seed`. A `model.name` that is a factory's import
    path ("package.module:factory") or a `fedmeta.plugins` entry point ("model.<name>") is
    called and checked as a factory given from Python is (`runtime.network_for`)."""
    name = cfg.model_name
    if name not in MODEL_NAMES:
        from fedmeta.federated.registry import load_plugin
        from fedmeta.federated.runtime import network_for

        factory = load_plugin("model", name, "model.name", MODEL_NAMES)
        try:
            return network_for(cfg, x_shape, n_outputs, factory, field_name="model.name")
        except BadInput as err:  # shown as the config gives it, not by the factory's qualified name
            raise type(err)(err.field, name, err.accepted) from None
    torch.manual_seed(cfg.run.seed)
    return build_model(name, x_shape, n_outputs, hidden=cfg.model.hidden, filters=cfg.model.filters)


def learner_for(cfg: Config, model: nn.Module, kind: str, algorithm: str | None = None) -> MetaLearner:
    """`meta.algorithm`'s learner; `algorithm` overrides it (federated runs whose clients do
    not meta-learn are evaluated by MAML's adaptation, without a compiled query pass)."""
    meta = cfg.meta
    return ALGORITHMS[algorithm or meta.algorithm](
        model, kind, inner_steps=meta.inner_steps, inner_lr=meta.inner_lr, batching=meta.batching,
        compile_query=meta.compile_query and algorithm is None)
