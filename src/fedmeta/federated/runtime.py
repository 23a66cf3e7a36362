"""A federated run's parts, built from its config: what every client runs (`ClientSide`,
the same in-process and on a supernode) and the runtime that holds the server, the
clients' side and a transport (in-process by default, Flower when deployed).
See docs/architecture.md for the rooms and one round's data flow.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fedmeta.build import ModelFactory, learner_for, network_for
from fedmeta.config import Config
from fedmeta.config.sections import PROCEDURES
from fedmeta.data.federated import FederatedData, check_data, make_federated
from fedmeta.data.table import TableData, embedded_columns, schema_sha256, with_schema
from fedmeta.device import to_cpu
from fedmeta.errors import BadInput, ConfigError, qualified_name, shown
from fedmeta.federated.aggregation import check_robust
from fedmeta.federated.client_steps import ClientStep, Compress, Pipeline, Privatize, Sign
from fedmeta.federated.compression import make_compression
from fedmeta.federated.dp_fedavg import ClientLevelDP
from fedmeta.federated.evaluation import personalization, summarize
from fedmeta.federated.inprocess import InProcess, key_lookup
from fedmeta.federated.registry import load_plugin
from fedmeta.federated.robust import Aggregator
from fedmeta.federated.rounds import RoundResult, run_round
from fedmeta.federated.sampling import expected_clients
from fedmeta.federated.server import Server, check_strategy
from fedmeta.federated.strategies import Strategy
from fedmeta.federated.training import Training
from fedmeta.federated.transport import Replies, Transport
from fedmeta.ledger.anchor import check_chain_installed
from fedmeta.meta import MetaLearner
from fedmeta.models import parameters_of
from fedmeta.tracking import check_tensorboard

RESERVED_STEPS = ("privatize", "compress", "sign")  # the pipeline's own steps


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
                    model: nn.Module | ModelFactory | None = None, data: FederatedData | None = None,
                    procedure: Any = None) -> ClientSide:
        """`model` (a module or a factory, `network_for`) replaces the config's network;
        `data` the config's clients (an owner's own table, `data.table.federated_table`);
        `procedure` the local procedure (`check_procedure`)."""
        check_client_steps(steps)
        check_procedure(cfg, procedure)
        if data is None:
            data = make_federated(cfg, torch.Generator().manual_seed(cfg.run.seed))
        model = network_for(cfg, data.x_shape, data.n_outputs, model, embeddings=embedded_columns(data))
        fedmeta = cfg.federated.clients.procedure == "fedmeta"
        learner = learner_for(cfg, model, data.kind, None if fedmeta else "maml")
        training = Training.from_config(cfg, model, data.kind, learner, data.train)
        field_name, named = "procedure", cfg.federated.clients.procedure
        if procedure is None and named not in PROCEDURES:  # a plugin the config names
            field_name, procedure = "federated.clients.procedure", load_plugin("procedure", named, field_name)
        if procedure is not None:
            built = built_procedure(procedure, model, data.kind, field_name)
            training = dataclasses.replace(training, procedure=built)
        client_dp = None
        if cfg.privacy.dp in ("central", "local"):
            client_dp = ClientLevelDP.from_config(cfg, *expected_clients(cfg.clients_per_round_count, len(data.train)))
        return cls(data, model, learner, training, client_dp, dict(steps or {}))

    def pipeline(self, cfg: Config, key_for: Callable[[int], Path | None]) -> Pipeline:
        return client_pipeline(cfg, self.client_dp, key_for, self.steps)


def check_procedure(cfg: Config, procedure: Any) -> None:
    """A local procedure from Python: an object with `step(params, anchor, episodes) ->
    params` (`federated.client.LocalProcedure`), or a factory `(model, kind) -> such an
    object`; not under example-level DP, whose procedures clip and noise each example."""
    if procedure is None:
        return
    if isinstance(procedure, type) or not (callable(getattr(procedure, "step", None)) or callable(procedure)):
        raise BadInput("procedure", shown(procedure), "an object with step(params, anchor, episodes) -> params, "
                                                      "or a factory (model, kind) -> such an object")
    if cfg.privacy.dp == "example":
        raise BadInput("procedure", shown(procedure), "unset with privacy.dp = 'example' (its procedures clip and "
                                                      "noise each example's gradient)")


def built_procedure(procedure: Any, model: nn.Module, kind: str, field_name: str = "procedure") -> Any:
    """The procedure object: `procedure` itself, or what its factory builds for `model`."""
    if callable(getattr(procedure, "step", None)):
        return procedure
    try:
        built = procedure(model, kind)
    except Exception as err:
        raise BadInput(field_name, shown(procedure), f"a factory (model, kind) that builds the procedure (it raised "
                                                     f"{type(err).__name__}: {err})".splitlines()[0]) from None
    if not callable(getattr(built, "step", None)):
        raise BadInput(field_name, shown(procedure), f"a factory whose object has step(params, anchor, episodes) "
                                                     f"(it built a {type(built).__name__})")
    return built


def check_remote(transport: Any) -> None:
    """A table whose rows stay with their owners (no `data.path`) runs only deployed."""
    if transport is None:
        raise ConfigError("data.path", None, "a .csv or .parquet file, or a list: an in-process run reads every "
                                             "owner's rows (only a deployed server runs on the schema alone)")


def check_task_options(cfg: Config, data: Any) -> None:
    """`data.class_weights` and `meta.eval_metrics` that the data's task has (the metrics
    computed where the rows are)."""
    weights = cfg.data.class_weights
    if weights is not None and (data.kind != "classification" or len(weights) != data.n_outputs):
        accepted = (f"{data.n_outputs} weights, one per class" if data.kind == "classification"
                    else "unset for a regression")
        raise ConfigError("data.class_weights", weights, accepted)
    for metric in cfg.meta.eval_metrics or ():
        if getattr(data, "remote", False):
            raise ConfigError("meta.eval_metrics", metric, "unset on a deployed server: each owner sends its four figures "
                                                           "and no query outputs")
        if metric in ("rmse", "mae") and data.kind != "regression":
            raise ConfigError("meta.eval_metrics", metric, "'auc' or 'balanced_accuracy' for a classification")
        if metric in ("auc", "balanced_accuracy") and data.kind != "classification":
            raise ConfigError("meta.eval_metrics", metric, "'rmse' or 'mae' for a regression")
        if metric == "auc" and data.n_outputs != 2:
            raise ConfigError("meta.eval_metrics", metric, f"'balanced_accuracy' for {data.n_outputs} classes "
                                                           "(auc takes two)")


def provenance(*, model: Any = None, strategy: Any = None, robust: Any = None,
               client_steps: dict[str, Any] | None = None, data: Any = None, procedure: Any = None) -> dict[str, Any]:
    """What a run took from Python instead of its config, by name (only what was given)."""
    out: dict[str, Any] = {}
    for key, obj in (("model", model), ("strategy", strategy), ("robust", robust), ("data", data),
                     ("procedure", procedure)):
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
                 robust: Aggregator | None = None, model: nn.Module | ModelFactory | None = None,
                 data: FederatedData | None = None, procedure: Any = None):
        if cfg.federated is None:
            raise ValueError("a federated runtime needs a [federated] section")
        self.cfg = cfg
        check_tensorboard(cfg)
        check_chain_installed(cfg.ledger.anchor)
        check_strategy(strategy)  # the cheap checks first: nothing is built for a bad argument
        check_client_steps(client_steps)
        if robust is not None:
            check_robust(cfg, robust)
        if data is not None:
            check_data(cfg, data, "data")
        check_procedure(cfg, procedure)
        self.provenance = provenance(model=model, strategy=strategy, robust=robust, client_steps=client_steps, data=data,
                                     procedure=procedure)
        self.clients = ClientSide.from_config(cfg, client_steps, model, data, procedure)
        if isinstance(self.clients.data, TableData):  # a table's config.toml records its schema
            self.cfg = cfg = with_schema(cfg, self.clients.data)
        if getattr(self.data, "remote", False):
            check_remote(transport)
        check_task_options(cfg, self.data)
        params = to_cpu(self.clients.learner.init(parameters_of(self.clients.model)))  # the server's stay on the CPU
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
        """The split's figures: computed here, or by the owners when the rows are theirs."""
        if getattr(self.data, "remote", False):
            return summarize(self.transport.evaluate(split, self.server.params), split)
        return personalization(self.learner, self.server.params, self.data, seed=self.cfg.run.seed,
                               inner_steps=self.cfg.meta.eval_inner_steps, split=split,
                               metrics=self.cfg.meta.eval_metrics)

    def start_record(self) -> dict[str, Any]:
        """What the ledger's `start` entry records besides the config: the parts given from
        Python, and for a table its schema's SHA-256 and each file's (in-process), or each
        owner's schema hash and row count (deployed)."""
        out: dict[str, Any] = {"python": self.provenance} if self.provenance else {}
        data = self.data
        if isinstance(data, TableData):
            record: dict[str, Any] = {"schema_sha256": schema_sha256(data.schema)}
            if data.remote:
                record["owners"] = dict(sorted(getattr(self.transport, "owners", {}).items()))
            else:
                record["files"] = {Path(p).name: sha for p, sha in data.files.items()}
            if data.source is not None:
                record["source"] = data.source
            out["data"] = record
        return out

    def state_dict(self) -> dict[str, Any]:
        state = {**self.server.state_dict(), "client_states": getattr(self.transport, "states", {}),
                 "client_streams": getattr(self.transport, "client_streams", True)}
        if self.provenance:  # only then: a config-only run's checkpoint is as before
            state["python"] = self.provenance
        if getattr(self.data, "files", None):  # a table's files: a resumed run must read the same
            state["data_files"] = dict(self.data.files)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        theirs = state.get("python", {})
        if theirs != self.provenance:  # parts given from Python are not in config.toml
            given = lambda parts: ", ".join(parts) or "none"
            raise BadInput("--resume", f"a checkpoint with Python parts: {given(theirs)}",
                           f"a runtime given the same parts from Python (this one: {given(self.provenance)}); "
                           "config.toml alone does not rebuild them")
        for path, sha in state.get("data_files", {}).items():
            now = getattr(self.data, "files", {}).get(path)
            if now != sha:
                field = "data.source" if getattr(self.data, "source", None) else "data.path"
                raise BadInput(field, path, f"the table the run began with (SHA-256 {sha[:16]}…, now "
                                                  f"{'absent' if now is None else now[:16] + '…'}): it changed since")
        self.server.load_state_dict(state)
        if "codec_state" in state:  # checkpoints before the client pipeline: the compression state only
            state = {"client_states": {c: {"compress": s} for c, s in state["codec_state"].items()}}
        if hasattr(self.transport, "states"):
            self.transport.states = state["client_states"]
        if hasattr(self.transport, "client_streams"):  # a run keeps the episode streams it began with
            self.transport.client_streams = state.get("client_streams", False)
