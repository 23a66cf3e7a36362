"""The data owner's side of a deployment: a Flower `ClientApp` that builds the run's client
side (`ClientSide`: data, model, local procedure, the client steps) from the config the
server sends, and answers each round with the same pipeline as in-process clients.

A client picks its own client id (`partition-id` of its supernode's `node_config`), draws
its episodes from its own stream (seed, round, attempt, client), and keeps its steps'
state (a top-k residual) in the node's Flower context, and with `state-dir` on its own
disk too, so that a resumed deployment resumes it (`client_state.py`). Episodes and
seeded noise are per (round, attempt, client) in both runtimes, so with `noise_seed` a
deployed run gives the in-process run's parameters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

from fedmeta.config import Config, load_config
from fedmeta.deploy import ckks, secagg
from fedmeta.deploy.client_state import ClientStateStore
from fedmeta.deploy.messages import (
    FIGURES,
    HEADER,
    STEP_STATE,
    check_deployable,
    read_params,
    train_reply,
)
from fedmeta.deploy.secagg import MASKED_INPUT, PROTOCOL, SHARE_KEYS, UNMASK
from fedmeta.errors import ConfigError
from fedmeta.federated.client_steps import ClientStep, Upload
from fedmeta.federated.client_steps import Context as StepContext
from fedmeta.federated.evaluation import client_figures, episodes
from fedmeta.federated.runtime import ClientSide
from fedmeta.federated.sampling import CLIENT, generator
from fedmeta.federated.transport import Reply
from fedmeta.federated.validation import check_update
from fedmeta.ledger.commitments import sign_update
from fedmeta.ledger.keys import load_private_key
from fedmeta.params import Params
from fedmeta.privacy.noise import rng_for
from fedmeta.threads import use_threads

_clients: dict[tuple, tuple[Config, ClientSide]] = {}  # one entry: the config (and steps) this process serves


def without_data_dir(cfg: Config) -> Config:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": None})})


def _own_data(cfg: Config, node_config: dict[str, Any]) -> Any:
    """The owner's own table (node_config `data-file`, and `owner` when the file has no
    client column), checked against the schema of the server's config; None: no such file."""
    data_file = str(node_config.get("data-file", ""))
    if not data_file:
        return None
    if cfg.data.name != "table" or cfg.data.clients is None or cfg.data.columns is None:
        raise ConfigError("data-file", data_file, "a server config with data.name = 'table' and its schema "
                                                  "(data.clients, data.columns): this supernode holds a table")
    from fedmeta.data.table import federated_table

    return federated_table(cfg.data, cfg.federated, data_file, str(node_config.get("owner", "")) or None)


def _partition(node_config: dict[str, Any]) -> tuple[int, int] | None:
    if "partition-id" not in node_config and "num-partitions" not in node_config:
        return None
    try:
        return int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, ValueError):
        raise ConfigError("node_config", dict(node_config), "partition-id=<int> num-partitions=<int>") from None


def client_side(cfg_toml: str, node_config: dict[str, Any], steps: dict[str, ClientStep] | None = None,
                procedure: Any = None) -> tuple[Config, ClientSide, int]:
    """This supernode's config, clients' side (the config's steps, the app's extra `steps`
    and its own data) and client id (-1: an owner held out of training, which only
    evaluates). An owner that pinned its own copy of the config (node_config `config`, a
    TOML path) refuses any other config from the server (its data folder aside). The
    client id is the supernode's `partition-id`, or, for an owner reading its own file
    (`data-file`), its place among the schema's training clients."""
    partition = _partition(node_config)
    data_dir, pinned = str(node_config.get("data-dir", "")), str(node_config.get("config", ""))
    own = (str(node_config.get("data-file", "")), str(node_config.get("owner", "")))
    key = (cfg_toml, data_dir, pinned, own, tuple((name, id(step)) for name, step in (steps or {}).items()),
           id(procedure))
    if key not in _clients:
        import tomllib

        cfg = Config.model_validate(tomllib.loads(cfg_toml))
        if pinned and without_data_dir(load_config(pinned, check_paths=False)) != without_data_dir(cfg):
            raise ConfigError("config", str(pinned), "the same config as the server's (this client pinned its own copy)")
        if data_dir:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": data_dir})})
        check_deployable(cfg)
        if partition is None and not own[0]:
            raise ConfigError("node_config", dict(node_config), "partition-id=<int> num-partitions=<int>, or data-file=<path>")
        _clients.clear()
        _clients[key] = cfg, ClientSide.from_config(cfg, steps, data=_own_data(cfg, node_config), procedure=procedure)
    cfg, side = _clients[key]
    owner = getattr(side.data, "owner", None)
    n = len(side.data.train)
    cid = partition[0] if owner is None else (owner[1] if owner[0] == "train" else -1)
    if partition is not None and (partition[1] != n or not 0 <= partition[0] < n or partition[0] != max(cid, 0)):
        raise ConfigError("node_config", f"partition-id={partition[0]} num-partitions={partition[1]}",
                          f"num-partitions = federated.n_clients = {n}, 0 <= partition-id < {n}"
                          + ("" if owner is None else f", partition-id = {cid} (this owner's place)"))
    return cfg, side, cid


def client_key_path(cfg: Config, node_config: dict[str, Any], cid: int) -> Path | None:
    """The client's Ed25519 key file: node_config `key` (a PEM path), else `<ledger.client_keys>/<id>.pem`."""
    path = node_config.get("key") or (Path(cfg.ledger.client_keys) / f"{cid}.pem" if cfg.ledger.client_keys else None)
    return None if path is None or not Path(path).is_file() else Path(path)


def client_update(header: dict[str, Any], params: Params, node_config: dict[str, Any], state: RecordDict,
                  protocol: dict[str, Any] | None = None, steps: dict[str, ClientStep] | None = None,
                  procedure: Any = None, encrypted: RecordDict | None = None) -> RecordDict:
    """One client's round: local procedure → the client steps (privatize, compress, sign).
    `state` is the node's Flower context state, which keeps the steps' state between rounds.
    With `protocol` (secure aggregation's public parameters) the update stays on the node
    and the reply carries the client's AdvertiseKeys instead (secagg.py). With `encrypted`
    (a CKKS round's records: the round, and a deal to install first) it stays on the node
    and the reply carries its weight only (ckks.py)."""
    cfg, side, cid = client_side(str(header["config"]), node_config, steps, procedure)
    if int(header["client"]) != cid:
        raise ConfigError("partition-id", cid, f"the client the server addressed ({header['client']})")
    if encrypted is not None and ckks.INSTALL in encrypted:
        ckks.install(state, cfg, cid, encrypted[ckks.INSTALL])
    r, attempt = int(header["round"]), int(header["attempt"])
    use_threads(cfg, side.training.batching)  # the in-process rule: same thread count, same float rounding
    gen, seed = generator(cfg.run.seed, r, attempt, CLIENT + cid), cfg.privacy.noise_seed
    delta = side.training.deltas([cid], params, gen, lambda c: None if seed is None else rng_for(seed, r, c + 1),
                                 lambda c: gen)[cid]  # this client's own stream, as in-process
    if isinstance(delta, Exception):
        raise delta
    key = client_key_path(cfg, node_config, cid)
    pipeline = side.pipeline(cfg, lambda _: key)
    if protocol is not None or encrypted is not None:  # the masked or encrypted input is signed instead
        pipeline = pipeline.without("sign")
    store = node_config.get("state-dir")
    store = store and ClientStateStore(str(store), str(header.get("run_key", "")), cid)
    if store:  # the state as of the previous (round, attempt), from this node's disk
        states = {n: v for n, v in store.load(r, attempt).items() if n in pipeline.steps}
    else:
        states = {n: state[STEP_STATE + n].to_torch_state_dict() for n in pipeline.steps if STEP_STATE + n in state}
    ctx = StepContext(params, r, attempt, gen, lambda c: rng_for(seed, r, c + 1), float(header["clip_norm"]),
                      str(header["run_id"]))
    upload, states = pipeline(Upload(cid, delta), states, ctx)
    for name, value in states.items():
        if isinstance(value, dict):
            state[STEP_STATE + name] = ArrayRecord(torch_state_dict=value)
    if store:
        store.save(r, attempt, {n: v for n, v in states.items() if isinstance(v, dict)})
    weight = float(getattr(side.data.train[cid], "n_examples", 1))
    if protocol is not None or encrypted is not None:
        update = check_update(str(cid), upload.data, params)  # the client's own check: nobody else sees Δ
        row = update if side.client_dp is None else side.client_dp.row(update, upload.report)
        keep = {"round": r, "attempt": attempt, "key": str(key or "")}
        if encrypted is not None:
            ckks.keep(state, str(encrypted[ckks.CKKS]["tag"]), row, {**keep, "client": cid})
            return train_reply(cid, Reply(b"", weight))
        advert = secagg.start(state, protocol, cid, row, keep)
        return train_reply(cid, Reply(advert, weight))
    return train_reply(cid, Reply(upload.data, weight, upload.report, upload.signed))


class ClientHandlers:
    """The ClientApp's message handlers; `steps`: extra client steps, `procedure`: the local
    procedure (as given to `Runtime`)."""

    def __init__(self, steps: dict[str, ClientStep] | None = None, procedure: Any = None):
        self.steps, self.procedure = dict(steps or {}), procedure

    def train(self, msg: Message, context: Context) -> Message:
        params = read_params(msg.content)  # name -> tensor
        protocol = dict(msg.content[PROTOCOL]) if PROTOCOL in msg.content else None
        encrypted = msg.content if ckks.CKKS in msg.content else None
        reply = client_update(dict(msg.content[HEADER]), params, dict(context.node_config), context.state, protocol,
                              self.steps, self.procedure, encrypted)
        return Message(reply, reply_to=msg)

    def secagg(self, msg: Message, context: Context) -> Message:
        """Secure aggregation's phases 1-3 on the node; the masked input is signed like an update."""
        kind, mine = msg.metadata.message_type, context.state.get(secagg.SECAGG)
        data = secagg.step(kind, context.state, msg.content)
        signed = None
        if kind == MASKED_INPUT and (run_id := str(msg.content[PROTOCOL].get("run_id", ""))) and str(mine["key"]):
            key = load_private_key(Path(str(mine["key"])))
            signed = sign_update(key, run_id, int(mine["round"]), str(int(mine["client"])), data, int(mine["attempt"]))
        return Message(train_reply(int(mine["client"]), Reply(data, 0.0, 0.0, signed)), reply_to=msg)

    def ckks(self, msg: Message, context: Context) -> Message:
        """A CKKS round's later steps on the node: encrypt the kept summand (signed like an
        update), or decrypt the sum."""
        header, todo = dict(msg.content[ckks.CKKS]), context.state.get(ckks.TODO)
        if todo is None:
            raise ConfigError("message", msg.metadata.message_type, "a CKKS step after this node's train reply")
        cid, signed = int(todo["client"]), None
        if msg.metadata.message_type == ckks.DECRYPT:
            return Message(train_reply(cid, Reply(ckks.decrypt(context.state, header), 0.0)), reply_to=msg)
        data = ckks.encrypt(context.state, header)
        if (run_id := str(header.get("run_id", ""))) and str(todo["key"]):
            key = load_private_key(Path(str(todo["key"])))
            signed = sign_update(key, run_id, int(todo["round"]), str(cid), data, int(todo["attempt"]))
        return Message(train_reply(cid, Reply(data, 0.0, 0.0, signed)), reply_to=msg)

    def deal(self, msg: Message, context: Context) -> Message:
        """Deal the run's CKKS keys to the clients whose public keys came with the message."""
        cfg, _, cid = client_side(str(msg.content[HEADER]["config"]), dict(context.node_config), self.steps,
                                  self.procedure)
        key = client_key_path(cfg, dict(context.node_config), cid)
        return Message(ckks.deal(cfg, cid, ckks.read_adverts(msg.content[ckks.CKKS]), key), reply_to=msg)

    def query(self, msg: Message, context: Context) -> Message:
        """Which client this is; an owner of its own table also says where it evaluates, and
        the SHA-256 of the schema its rows were read with, and how many rows it holds. In a
        CKKS run a training client also sends its key-exchange key (ckks.py)."""
        cfg, side, cid = client_side(str(msg.content[HEADER]["config"]), dict(context.node_config), self.steps,
                                     self.procedure)
        body: dict[str, Any] = {"client": cid}
        if cfg.privacy.secure_aggregation == "ckks" and cid >= 0:
            body.update(ckks.advertise(context.state, cid, client_key_path(cfg, dict(context.node_config), cid)))
        if (owner := getattr(side.data, "owner", None)) is not None:
            from fedmeta.data.table import schema_sha256

            mine = side.data.client_at(*owner)
            body.update(split=owner[0], index=owner[1], schema_sha256=schema_sha256(side.data.schema),
                        rows=mine.n_examples)
        return Message(RecordDict({HEADER: ConfigRecord(body)}), reply_to=msg)

    def evaluate(self, msg: Message, context: Context) -> Message:
        """Personalization on this owner's own evaluation episode: its figures go back, not its rows."""
        header = dict(msg.content[HEADER])
        cfg, side, _ = client_side(str(header["config"]), dict(context.node_config), self.steps, self.procedure)
        owner, split = getattr(side.data, "owner", None), str(header["split"])
        if owner is None or owner[0] != split:
            raise ConfigError("split", split, f"the split this owner evaluates in ({owner and owner[0]})")
        mine = side.data.client_at(*owner)
        params = read_params(msg.content)
        use_threads(cfg, side.training.batching)
        batch = episodes([mine], [owner[1]], seed=cfg.run.seed, split=split)
        per = client_figures(side.learner, params, batch, cfg.meta.eval_inner_steps)
        figures = ConfigRecord({k: float(v[0]) for k, v in per.items()})
        return Message(RecordDict({HEADER: ConfigRecord({"split": split, "index": owner[1]}), FIGURES: figures}),
                       reply_to=msg)


def make_client_app(steps: dict[str, ClientStep] | None = None, procedure: Any = None) -> ClientApp:
    """A ClientApp whose clients also run `steps`, and `procedure` as their local procedure
    (a module of the owner's, named in its pyproject's `clientapp`); `client_app` is the
    stock one."""
    handlers, app = ClientHandlers(steps, procedure), ClientApp()
    app.train()(handlers.train)
    for kind in (SHARE_KEYS, MASKED_INPUT, UNMASK):
        app.train(kind.split(".")[1])(handlers.secagg)
    for kind in (ckks.ENCRYPT, ckks.DECRYPT):
        app.train(kind.split(".")[1])(handlers.ckks)
    app.query()(handlers.query)
    app.query(ckks.DEAL.split(".")[1])(handlers.deal)
    app.evaluate()(handlers.evaluate)
    return app


client_app = make_client_app()
