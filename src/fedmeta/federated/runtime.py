"""A federated run's parts, built from its config: what every client runs (`ClientSide`,
the same in-process and on a supernode) and the runtime that holds the server, the
clients' side and a transport (in-process by default, Flower when deployed).
See docs/architecture.md for the rooms and one round's data flow.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmeta.build import learner_for, model_for
from fedmeta.config import Config
from fedmeta.data.federated import FederatedData, make_federated
from fedmeta.errors import BadInput
from fedmeta.federated.aggregation import check_robust, qualified_name, shown
from fedmeta.federated.client_steps import ClientStep, Compress, Pipeline, Privatize, Sign
from fedmeta.federated.compression import make_compression
from fedmeta.federated.dp_fedavg import ClientLevelDP
from fedmeta.federated.evaluation import personalization
from fedmeta.federated.inprocess import InProcess, key_lookup
from fedmeta.federated.robust import Aggregator
from fedmeta.federated.rounds import RoundResult, run_round
from fedmeta.federated.sampling import expected_clients
from fedmeta.federated.server import Server, check_strategy
from fedmeta.federated.strategies import Strategy
from fedmeta.federated.training import Training
from fedmeta.federated.transport import Replies, Transport
from fedmeta.meta import MetaLearner
from fedmeta.models import HEAD, parameters_of

ModelFactory = Callable[[tuple[int, ...], int], nn.Module]
RESERVED_STEPS = ("privatize", "compress", "sign")  # the pipeline's own steps


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def network_for(cfg: Config, x_shape: tuple[int, ...], n_outputs: int,
                model: nn.Module | ModelFactory | None = None, field_name: str = "model") -> nn.Module:
    """The run's network: the config's (`model_for`), or one given from Python. A module is
    deep-copied (its architecture and its parameters are the run's initial ones); a factory
    `(x_shape, n_outputs) -> nn.Module` is called after seeding torch with `run.seed`, as
    `model_for` builds the config's. Either must map a batch of the data's inputs to
    `n_outputs` outputs; anything else is a one-line `BadInput` naming `field_name`."""
    if model is None:
        return model_for(cfg, x_shape, n_outputs)
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


def check_client_steps(steps: dict[str, ClientStep] | None, field_name: str = "client_steps") -> None:
    """Client steps by name, each an (init, apply) object (`client_steps.ClientStep`)."""
    if steps is None:
        return
    if not isinstance(steps, dict):
        raise BadInput(field_name, shown(steps), "a dict of step name -> object with init(params) and apply(upload, state, ctx)")
    for name, step in steps.items():
        if not isinstance(name, str) or not name or name in RESERVED_STEPS:
            raise BadInput(field_name, shown(name), f"step names: non-empty strings other than {', '.join(RESERVED_STEPS)}")
        if isinstance(step, type) or not all(callable(getattr(step, m, None)) for m in ("init", "apply")):
            why = " (a class: pass an instance)" if isinstance(step, type) else ""
            raise BadInput(f"{field_name}[{name!r}]", shown(step),
                           f"an object with init(params) -> state and apply(upload, state, ctx) -> (upload, state){why}")


def client_pipeline(cfg: Config, client_dp: ClientLevelDP | None, key_for: Callable[[int], Path | None],
                    extra: dict[str, ClientStep] | None = None) -> Pipeline:
    """privatize (client-level DP) → the `extra` steps → compress → sign."""
    clients = cfg.federated.clients
    steps: dict[str, Any] = {} if client_dp is None else {"privatize": Privatize(client_dp)}
    steps.update(extra or {})
    steps["compress"] = Compress(make_compression(clients.compression, clients.topk_fraction))
    steps["sign"] = Sign(key_for)
    return Pipeline(steps)


@dataclass
class ClientSide:
    """What the clients run: their data, the network and learner, the local procedure and
    the pipeline after it."""

    data: FederatedData
    model: nn.Module
    learner: MetaLearner
    training: Training
    client_dp: ClientLevelDP | None
    steps: dict[str, ClientStep] = field(default_factory=dict)  # extra steps, before compression

    @classmethod
    def from_config(cls, cfg: Config, steps: dict[str, ClientStep] | None = None,
                    model: nn.Module | ModelFactory | None = None) -> ClientSide:
        """`model` (a module or a factory, `network_for`) replaces the config's network."""
        check_client_steps(steps)
        data = make_federated(cfg, torch.Generator().manual_seed(cfg.run.seed))
        model = network_for(cfg, data.x_shape, data.n_outputs, model)
        fedmeta = cfg.federated.clients.procedure == "fedmeta"
        learner = learner_for(cfg, model, data.kind, None if fedmeta else "maml")
        training = Training.from_config(cfg, model, data.kind, learner, data.train)
        client_dp = None
        if cfg.privacy.dp in ("central", "local"):
            client_dp = ClientLevelDP.from_config(cfg, *expected_clients(cfg.clients_per_round_count, len(data.train)))
        return cls(data, model, learner, training, client_dp, dict(steps or {}))

    def pipeline(self, cfg: Config, key_for: Callable[[int], Path | None]) -> Pipeline:
        return client_pipeline(cfg, self.client_dp, key_for, self.steps)


def provenance(*, model: Any = None, strategy: Any = None, robust: Any = None,
               client_steps: dict[str, Any] | None = None) -> dict[str, Any]:
    """What a run took from Python instead of its config, by name (only what was given)."""
    out: dict[str, Any] = {}
    for key, obj in (("model", model), ("strategy", strategy), ("robust", robust)):
        if obj is not None:
            out[key] = qualified_name(obj)
    if client_steps:
        out["client_steps"] = [{"name": str(k), "step": qualified_name(v)} for k, v in client_steps.items()]
    return out


class Runtime:
    """The server, the clients' side and the transport between them, for one run.
    `transport(runtime)` builds another transport than the in-process one; `strategy` (an
    `(init, apply)` pair, `strategies/base.py`) replaces the configured one; `client_steps`
    (`client_steps.ClientStep`s by name) run on every client after its DP step, before
    compression — on a supernode, give the same steps to `make_client_app`; `robust` (an
    `Aggregator`, `(updates, weights) -> update`) replaces `federated.robust.rule`; `model`
    (an `nn.Module`, or a factory `(x_shape, n_outputs) -> nn.Module`) replaces the
    config's network in-process (`network_for`). Each is checked here, before anything
    runs, and recorded in `provenance` (what came from Python rather than the config); a
    checkpoint of such a run is refused by a runtime built without the same objects."""

    def __init__(self, cfg: Config, transport: Callable[[Runtime], Transport] | None = None, *,
                 strategy: Strategy | None = None, client_steps: dict[str, ClientStep] | None = None,
                 robust: Aggregator | None = None, model: nn.Module | ModelFactory | None = None):
        if cfg.federated is None:
            raise ValueError("a federated runtime needs a [federated] section")
        self.cfg = cfg
        check_strategy(strategy)  # the cheap checks first: nothing is built for a bad argument
        check_client_steps(client_steps)
        if robust is not None:
            check_robust(cfg, robust)
        self.provenance = provenance(model=model, strategy=strategy, robust=robust, client_steps=client_steps)
        self.clients = ClientSide.from_config(cfg, client_steps, model)
        params = self.clients.learner.init(parameters_of(self.clients.model))
        self.server = Server(cfg, params, len(self.clients.data.train), self.clients.training.event, strategy, robust)
        if self.clients.client_dp is not None:  # one DP stage: the server's C is the clients' C
            self.clients.client_dp = self.server.client_dp
        if transport is None:
            pipeline = self.clients.pipeline(cfg, key_lookup(cfg.ledger.client_keys))
            self.transport: Any = InProcess(cfg, self.clients.training, pipeline)
        else:
            self.transport = transport(self)
        self.run_id = ""

    @property
    def data(self) -> FederatedData:
        return self.clients.data

    @property
    def learner(self) -> MetaLearner:
        return self.clients.learner

    @property
    def params(self):
        return self.server.params

    @property
    def round(self) -> int:
        return self.server.round

    def enable_signing(self, run_id: str) -> None:
        """Clients sign their updates for `run_id`; the server admits only updates signed by
        the keys `ledger.participants` registers."""
        self.run_id = run_id
        self.server.admission.enable_signing(run_id, self.cfg.ledger.participants)

    def run_round(self) -> RoundResult:
        fed = self.cfg.federated
        return run_round(self.server, self.transport, max_retries=fed.max_retries, min_clients=fed.min_clients,
                         strategy=fed.server.strategy, run_id=self.run_id)

    def exchange(self, round_: int, attempt: int = 0) -> Replies:
        """One exchange of round `round_` over the transport, without aggregating (for inspection)."""
        sampled, broadcast = self.server.broadcast(round_, attempt, self.run_id)
        return self.transport.exchange(round_, attempt, sampled, broadcast)

    def personalization(self, split: str = "test") -> dict[str, Any]:
        return personalization(self.learner, self.server.params, self.data, seed=self.cfg.run.seed,
                               inner_steps=self.cfg.meta.eval_inner_steps, split=split)

    def state_dict(self) -> dict[str, Any]:
        state = {**self.server.state_dict(), "client_states": getattr(self.transport, "states", {})}
        if self.provenance:  # only then: a config-only run's checkpoint is as before
            state["python"] = self.provenance
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs = state.get("python", {})
        if theirs != self.provenance:  # parts given from Python are not in config.toml
            given = lambda parts: ", ".join(parts) or "none"
            raise BadInput("--resume", f"a checkpoint with Python parts: {given(theirs)}",
                           f"a runtime given the same parts from Python (this one: {given(self.provenance)}); "
                           "config.toml alone does not rebuild them")
        self.server.load_state_dict(state)
        if "codec_state" in state:  # checkpoints before the client pipeline: the compression state only
            state = {"client_states": {c: {"compress": s} for c, s in state["codec_state"].items()}}
        if hasattr(self.transport, "states"):
            self.transport.states = state["client_states"]
