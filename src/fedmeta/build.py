"""The parts a config names, built in one place for central and federated runs: the
network (`model.name`, "auto" resolved by `Config.model_name`), initialised on the CPU and
placed on the run's device (`run.device`), and the meta-learner."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from fedmeta.config import Config
from fedmeta.config.sections import MODEL_NAMES
from fedmeta.device import resolve
from fedmeta.errors import BadInput, shown
from fedmeta.meta import ALGORITHMS, MetaLearner
from fedmeta.models import HEAD, build_model

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]


def model_for(cfg: Config, x_shape: tuple[int, ...], n_outputs: int,
              embeddings: list[tuple[int, int]] | None = None) -> nn.Module:
    """The network, initialised from `run.seed`. A `model.name` that is a factory's import
    path ("package.module:factory") or a `fedmeta.plugins` entry point ("model.<name>") is
    called and checked as a factory given from Python is (`network_for`). `embeddings`: a
    table's index columns (`data.table.embedded_columns`), which the MLP embeds."""
    name = cfg.model_name
    if name not in MODEL_NAMES:
        from fedmeta.federated.registry import load_plugin

        factory = load_plugin("model", name, "model.name", MODEL_NAMES)
        try:
            return _network(cfg, x_shape, n_outputs, factory, field_name="model.name")
        except BadInput as err:  # shown as the config gives it, not by the factory's qualified name
            raise type(err)(err.field, name, err.accepted) from None
    torch.manual_seed(cfg.run.seed)
    return build_model(name, x_shape, n_outputs, hidden=cfg.model.hidden, filters=cfg.model.filters,
                       embeddings=embeddings, embedding_dim=cfg.model.embedding_dim)


def device_for(cfg: Config) -> torch.device:
    """`run.device` resolved on this machine (`fedmeta.device.resolve`): a device it lacks
    is a one-line `ConfigError`, raised before anything is built or written."""
    return resolve(cfg.run.device, example_dp=cfg.privacy.dp == "example")


def learner_for(cfg: Config, model: nn.Module, kind: str, algorithm: str | None = None) -> MetaLearner:
    """`meta.algorithm`'s learner; `algorithm` overrides it (federated runs whose clients do
    not meta-learn are evaluated by MAML's adaptation, without a compiled query pass)."""
    meta = cfg.meta
    return ALGORITHMS[algorithm or meta.algorithm](
        model, kind, inner_steps=meta.inner_steps, inner_lr=meta.inner_lr, batching=meta.batching,
        compile_query=meta.compile_query and algorithm is None, class_weights=class_weights(cfg))


def class_weights(cfg: Config) -> tuple[float, ...] | None:
    """`data.class_weights` as the losses take them."""
    return None if cfg.data.class_weights is None else tuple(cfg.data.class_weights)


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def network_for(cfg: Config, x_shape: tuple[int, ...], n_outputs: int,
                model: nn.Module | ModelFactory | None = None, field_name: str = "model",
                embeddings: list[tuple[int, int]] | None = None) -> nn.Module:
    """The run's network (`_network`), built and checked on the CPU, then placed on the
    run's device (`device_for`)."""
    device = device_for(cfg)
    return _network(cfg, x_shape, n_outputs, model, field_name, embeddings).to(device)


def _network(cfg: Config, x_shape: tuple[int, ...], n_outputs: int,
             model: nn.Module | ModelFactory | None = None, field_name: str = "model",
             embeddings: list[tuple[int, int]] | None = None) -> nn.Module:
    """The config's network (`model_for`), or one given from Python. A module is
    deep-copied (its architecture and its parameters are the run's initial ones); a factory
    `(x_shape, n_outputs) -> nn.Module` is called after seeding torch with `run.seed`, as
    `model_for` builds the config's. Either must map a batch of the data's inputs to
    `n_outputs` outputs; anything else is a one-line `BadInput` naming `field_name`."""
    if model is None:
        return model_for(cfg, x_shape, n_outputs, embeddings)
    if isinstance(model, nn.Module):
        try:
            net = copy.deepcopy(model)
        except Exception as err:
            raise BadInput(field_name, shown(model), f"a torch.nn.Module that can be deep-copied ({_first_line(err)})") from None
    elif callable(model):
        torch.manual_seed(cfg.run.seed)
        try:
            net = model(tuple(x_shape), n_outputs)
        except Exception as err:
            raise BadInput(field_name, shown(model), f"a factory (x_shape, n_outputs) -> nn.Module; called with "
                                                      f"({tuple(x_shape)}, {n_outputs}) it raised {_first_line(err)}") from None
        if not isinstance(net, nn.Module):
            raise BadInput(field_name, shown(model), f"a factory (x_shape, n_outputs) -> nn.Module; it returned "
                                                      f"{type(net).__name__}")
    else:
        raise BadInput(field_name, shown(model), "a torch.nn.Module, or a factory (x_shape, n_outputs) -> nn.Module")
    _check_network(cfg, net, shown(model), x_shape, n_outputs, field_name)
    return net


def _check_network(cfg: Config, net: nn.Module, label: Any, x_shape: tuple[int, ...], n_outputs: int,
                   field_name: str) -> None:
    """One forward pass on a zero batch of the data's input shape (in eval mode, so no
    statistics move): the output must be (batch, n_outputs)."""
    names = [k for k, p in net.named_parameters() if p.is_floating_point()]
    if not names:
        raise BadInput(field_name, label, "a network with floating-point parameters to learn")
    fed = cfg.federated
    algorithm = cfg.meta.algorithm if fed is None or fed.clients.procedure == "fedmeta" else None
    if algorithm == "anil" and not any(k.startswith(HEAD) for k in names):
        raise BadInput(field_name, label, f"a network whose output layer is named `{HEAD[:-1]}` "
                                          f"(meta.algorithm = 'anil' adapts only {HEAD}*)")
    dtype = next(p.dtype for p in net.parameters() if p.is_floating_point())
    training = net.training
    net.eval()
    try:
        with torch.no_grad():
            out = net(torch.zeros(2, *x_shape, dtype=dtype))
    except Exception as err:
        raise BadInput(field_name, label, f"a network taking inputs of shape (batch, {', '.join(map(str, x_shape))}); "
                                          f"a zero batch raised {_first_line(err)}") from None
    finally:
        net.train(training)
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, n_outputs):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise BadInput(field_name, label, f"a network with {n_outputs} output(s) for this dataset: (batch, "
                                          f"{', '.join(map(str, x_shape))}) -> (batch, {n_outputs}), got {got} for a batch of 2")
