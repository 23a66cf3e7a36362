"""Federated runs on Flower's deployment runtime (flwr ≥ 1.41, Message API): a `ServerApp`
and a `ClientApp` over the same runtime as in-process runs; only the transport differs
(docs/architecture.md).

The server is the in-process `Runtime` with `FlowerTransport`: it samples client ids
exactly as in-process, then sends each sampled client ONE `train` message (global
parameters + round header) and gets ONE reply (the encoded, privatized, optionally signed
update and its weight). Admission, aggregation, the strategy, the accountant, the ledger,
checkpoints, metrics and evaluation are the same code. One `query` message per node at
the start maps Flower node ids to client ids (the node's `partition-id`). With secure
aggregation (SecAgg / SecAgg+) a round is four exchanges driving the protocol's state
machines (`secagg.py`), and the server's aggregation gets only the unmasked sum.

A client builds the clients' side of the run (`ClientSide`: data, model, local procedure,
pipeline) from the config the server sends, picks its own client (`partition-id` of its
supernode's `node_config`), draws its episodes from its own stream (seed, round, attempt,
client) and runs the same client steps as in-process; the steps' state (a top-k residual)
lives in the node's Flower context. Seeded noise is per (round, client) in both runtimes,
so example-level DP runs with a fixed seed give the same parameters here and in-process;
other procedures draw the same client sample but different episodes (in-process draws all
clients' episodes from one round stream).
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedmeta.config import Config, load_config
from fedmeta.deploy import secagg
from fedmeta.deploy.secagg import MASKED_INPUT, PAYLOAD, PROTOCOL, SHARE_KEYS, UNMASK
from fedmeta.errors import ConfigError, FedmetaError
from fedmeta.federated.client_steps import ClientStep, Upload
from fedmeta.federated.client_steps import Context as StepContext
from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import ClientSide, Runtime
from fedmeta.federated.sampling import CLIENT, generator
from fedmeta.federated.secure import GRAPHS, threshold_for
from fedmeta.federated.transport import Broadcast, Replies, Reply, Summed
from fedmeta.federated.validation import check_update
from fedmeta.ledger.commitments import SignedUpdate, sign_update
from fedmeta.ledger.keys import load_private_key
from fedmeta.params import Params, unflatten
from fedmeta.privacy.noise import rng_for
from fedmeta.privacy.secagg.protocol import SecAggAbort, SecAggConfig, SecAggServer
from fedmeta.threads import use_threads

log = logging.getLogger("fedmeta.deploy")

TRAIN, QUERY = "train", "query"
HEADER, PARAMS, UPDATE = "header", "params", "update"
STEP_STATE = "fedmeta.step."  # + a client step's name: its state (e.g. the top-k residual) in the node's context


def check_deployable(cfg: Config) -> None:
    """Raise ConfigError for the options this runtime does not carry over the wire."""
    fed, dp = cfg.federated, cfg.privacy
    if fed is None:
        raise ConfigError("federated", None, "a [federated] section (deployment runs are federated)")
    if dp.secure_aggregation == "ckks":
        raise ConfigError("privacy.secure_aggregation", dp.secure_aggregation,
                          "'off', 'secagg' or 'secagg+' with fedmeta deploy (CKKS sums are not carried over Flower yet)")
    if fed.attack.name != "none":
        raise ConfigError("federated.attack.name", fed.attack.name, "'none' with fedmeta deploy (attacks are simulated in-process only)")
    for name in ("dropout_rate", "straggler_rate"):
        if getattr(fed.clients, name) > 0:
            raise ConfigError(f"federated.clients.{name}", getattr(fed.clients, name), "0 with fedmeta deploy (real clients drop out on their own)")


# -- the wire: plain values <-> Flower records ----------------------------------------------
def train_request(cfg_toml: str, b: Broadcast, round_: int, attempt: int, cid: int) -> RecordDict:
    header = {"config": cfg_toml, "round": round_, "attempt": attempt, "client": cid, "run_id": b.run_id,
              "clip_norm": b.clip_norm}
    return RecordDict({HEADER: ConfigRecord(header), PARAMS: ArrayRecord(torch_state_dict=b.params)})


def train_reply(cid: int, reply: Reply) -> RecordDict:
    body: dict[str, Any] = {"client": cid, "data": reply.data, "weight": reply.weight, "report": reply.report}
    if reply.signed is not None:
        body.update({f"signed.{k}": v for k, v in reply.signed.to_dict().items()})
    return RecordDict({UPDATE: ConfigRecord(body)})


def read_reply(content: RecordDict) -> tuple[int, Reply]:
    body = content[UPDATE]
    fields = {k.removeprefix("signed."): v for k, v in body.items() if k.startswith("signed.")}
    signed = SignedUpdate.from_dict(fields) if fields else None
    return int(body["client"]), Reply(bytes(body["data"]), float(body["weight"]), float(body["report"]), signed)


# -- server: the Flower transport ---------------------------------------------------------
class FlowerTransport:
    """The runtime's transport over a Flower `Grid`: each sampled client with a supernode gets
    ONE `train` message (global parameters + round header) and sends ONE reply (its update
    from the shared client pipeline); with secure aggregation, four exchanges drive the
    protocol and the server learns the sum only. Clients sign on their own machines."""

    def __init__(self, cfg: Config, grid: Grid, *, min_nodes: int, wait: float = 300.0, deadline: float = 3600.0):
        check_deployable(cfg)
        self.grid, self.deadline, self.toml = grid, deadline, cfg.to_toml()
        self.neighbourhood = cfg.privacy.secure_aggregation
        self.signs = bool(cfg.ledger.participants)
        self.nodes = self.register(min_nodes, wait)  # client id -> node id

    def register(self, min_nodes: int, wait: float) -> dict[int, int]:
        """Wait for `min_nodes` supernodes, then ask each which client it is (one exchange)."""
        stop = time.monotonic() + wait
        while len(ids := list(self.grid.get_node_ids())) < min_nodes:
            if time.monotonic() > stop:
                raise FedmetaError(f"{len(ids)} of {min_nodes} supernodes connected after {wait:.0f} s")
            time.sleep(1.0)
        header = ConfigRecord({"config": self.toml})
        asks = [Message(RecordDict({HEADER: header}), dst_node_id=n, message_type=QUERY) for n in ids]
        nodes: dict[int, int] = {}
        refused: dict[int, str] = {}
        received = self.grid.send_and_receive(asks, timeout=wait)
        by_message = {m.metadata.message_id: m.metadata.dst_node_id for m in asks if m.metadata.message_id}
        for reply in received:
            node = by_message.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                refused[node] = reply.error.reason
                log.warning("supernode %d refused to join: %s", node, reply.error.reason)
                continue
            cid = int(reply.content[HEADER]["client"])
            if cid in nodes:
                raise FedmetaError(f"supernodes {nodes[cid]} and {node} both hold client {cid} (partition-id)")
            nodes[cid] = node
        if not nodes:  # nothing to train with: say why, rather than fail every round
            why = "; ".join(f"supernode {n}: {r}" for n, r in sorted(refused.items())) or f"no answer in {wait:.0f} s"
            raise FedmetaError(f"no supernode joined the run ({len(ids)} asked): {why}")
        log.info("clients on supernodes: %s", dict(sorted(nodes.items())))
        return nodes

    def exchange(self, round_: int, attempt: int, sampled: list[int], b: Broadcast) -> Replies:
        out = Replies(sampled, attempt, dropped={c: "no supernode holds this client" for c in sampled if c not in self.nodes})
        clients = [c for c in sampled if c in self.nodes]
        asks = {c: train_request(self.toml, b, round_, attempt, c) for c in clients}
        if self.neighbourhood in GRAPHS:
            return self.exchange_secure(round_, attempt, clients, asks, b, out)
        for cid, content in self.send(TRAIN, asks, f"{round_}.{attempt}", out.dropped).items():
            out.replies[cid] = read_reply(content)[1]
        return out

    def send(self, kind: str, asks: dict[int, RecordDict], group: str, dropped: dict[int, str]) -> dict[int, RecordDict]:
        """Send each client its message, return the replies by client; a client whose
        ClientApp raised, whose supernode is gone (the superlink answers for it) or that
        missed the deadline goes to `dropped`. A reply is matched to its client by the
        message it answers, else by its sender; one that matches no client asked here is
        ignored."""
        sent = {c: Message(body, dst_node_id=self.nodes[c], message_type=kind, group_id=group) for c, body in asks.items()}
        client_of = {n: c for c, n in self.nodes.items() if c in asks}
        replies: dict[int, RecordDict] = {}
        answered: set[int] = set()
        received = self.grid.send_and_receive(list(sent.values()), timeout=self.deadline)
        by_message = {m.metadata.message_id: c for c, m in sent.items() if m.metadata.message_id}
        for reply in received:
            meta = reply.metadata
            cid = by_message.get(meta.reply_to_message_id, client_of.get(meta.src_node_id))
            if cid is None or cid in answered:
                log.warning("round %s: ignoring a %s reply from node %s that answers no open request", group, kind,
                            meta.src_node_id)
                continue
            answered.add(cid)
            if reply.has_error():
                dropped[cid] = f"failed: {reply.error.reason}"
                log.warning("round %s: client %d failed in %s: %s", group, cid, kind, reply.error.reason)
                continue
            replies[cid] = reply.content
        for c in asks:
            if c not in replies and c not in dropped:
                dropped[c] = f"straggler: no {kind} reply before the round deadline"
        return replies

    # -- secure aggregation: four exchanges, the server learns the sum only -------------------
    def exchange_secure(self, round_: int, attempt: int, clients: list[int], asks: dict[int, RecordDict],
                        b: Broadcast, out: Replies) -> Replies:
        """Drive `SecAggServer` over the four exchanges (secagg.py); a client silent in a
        phase is dropped from it on; below threshold the protocol aborts (no sum)."""
        out.summed, group = Summed(None, 0.0, frozenset()), f"{round_}.{attempt}"
        if not clients:
            return out
        template = secagg.in_order(b.aggregation.row(b.params, 0.0))
        config = SecAggConfig(clients=tuple(clients), threshold=threshold_for(len(clients)),
                              dim=sum(t.numel() for t in template.values()) + 1, clip=b.aggregation.clip(),
                              neighbourhood=GRAPHS[self.neighbourhood], session=secrets.token_bytes(16))
        header, server = secagg.config_header(config, group), SecAggServer(config)
        costs = out.costs = {"secagg_bytes_up": [0] * 4, "secagg_bytes_down": [0] * 4, "secagg_exchange_seconds": [0.0] * 4}

        def run(phase: int, kind: str, to: dict[int, bytes], extra: dict[int, dict[str, Any]] | None = None) -> dict[int, Reply]:
            start = time.perf_counter()
            if phase == 0:
                for body in asks.values():
                    body[PROTOCOL] = ConfigRecord(header)
                requests = asks
            else:
                requests = {c: secagg.request(header, m, **(extra or {}).get(c, {})) for c, m in to.items()}
            replies = {c: read_reply(r)[1] for c, r in self.send(kind, requests, group, out.dropped).items()}
            costs["secagg_exchange_seconds"][phase] = round(time.perf_counter() - start, 3)
            costs["secagg_bytes_down"][phase] = sum(len(m) for m in to.values())
            costs["secagg_bytes_up"][phase] = sum(len(r.data) for r in replies.values())
            return replies

        try:
            adverts = run(0, TRAIN, {})
            weights = {c: r.weight for c, r in adverts.items()}
            shares = run(1, SHARE_KEYS, server.collect_keys({c: r.data for c, r in adverts.items()}))
            to = server.collect_shares({c: r.data for c, r in shares.items()})
            live = [c for c in weights if c in to]
            scaled = dict(zip(live, b.aggregation.weights([weights[c] for c in live]), strict=True))
            masked = run(2, MASKED_INPUT, to, {c: {"weight": scaled[c], "run_id": b.run_id} for c in to})
            accepted = {}
            for c, reply in masked.items():
                out.replies[c] = reply
                if (refusal := b.check_signature(c, reply.data, reply.signed)) is not None:  # dropped from the sum
                    out.refused[c] = refusal
                    continue
                accepted[c] = reply.data
            to = server.collect_masked(accepted)
            total = server.unmask({c: r.data for c, r in run(3, UNMASK, to).items()})  # (dim,)
        except SecAggAbort as err:
            log.warning("round %d attempt %d: %s", round_, attempt, err)
            for c in clients:
                out.dropped.setdefault(c, f"secure aggregation aborted: {err}")
            return out
        out.summed = Summed(unflatten(total[:-1], template), float(total[-1]), server.survivors)
        costs.update(secagg_server_seconds=round(server.stats.total_seconds, 4), secagg_included=len(server.survivors))
        return out


server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run config keys: `config` (resolved TOML path), `out` (run folder), `min-nodes`,
    `wait` (s to wait for supernodes), `deadline` (s per round), `resume` (bool)."""
    from fedmeta.deploy.launch import ERROR_FILE, write_failure

    rc = context.run_config
    try:
        serve(grid, rc)
    except Exception as err:  # the launcher (`fedmeta deploy local`) prints it; Flower's log has the traceback
        if str(rc.get(ERROR_FILE, "")):
            write_failure(Path(str(rc[ERROR_FILE])), err)
        raise


def serve(grid: Grid, rc: Any) -> None:
    """The ServerApp's work, from its run config (`server_main`)."""
    from fedmeta.deploy.launch import check_seconds
    from fedmeta.report import write_report
    from fedmeta.rundir import RunDir

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order RDP notes
    out, config = Path(str(rc["out"])), Path(str(rc["config"]))
    resume = bool(rc.get("resume", False))
    wait = check_seconds("wait", float(rc.get("wait", 300)))
    deadline = check_seconds("deadline", float(rc.get("deadline", 3600)))
    if resume or (out / "config.toml").resolve() == config.resolve():  # resumed, or made by the launcher
        run, cfg = RunDir.open(out, lock=True)  # the one writer while the launcher waits
    else:
        cfg = load_config(config)
        run = RunDir.create(out, cfg)
    min_nodes = int(rc.get("min-nodes", cfg.federated.min_clients))
    if not 1 <= min_nodes <= cfg.federated.n_clients:
        raise ConfigError("min-nodes", min_nodes, f"1 to federated.n_clients = {cfg.federated.n_clients}")
    runtime = Runtime(cfg, lambda _: FlowerTransport(cfg, grid, min_nodes=min_nodes, wait=wait, deadline=deadline))
    run_federated(cfg, run, resume=resume, show_progress=False, runtime=runtime)
    write_report(run.path)


# -- client ----------------------------------------------------------------------------------
_clients: dict[tuple, tuple[Config, ClientSide]] = {}  # one entry: the config (and steps) this process serves


def without_data_dir(cfg: Config) -> Config:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": None})})


def client_side(cfg_toml: str, node_config: dict[str, Any],
                steps: dict[str, ClientStep] | None = None) -> tuple[Config, ClientSide, int]:
    """This supernode's config, clients' side (the config's steps, the app's extra `steps`
    and its own data) and client id. An owner that pinned its own copy of the config
    (node_config `config`, a TOML path) refuses any other config from the server (its data
    folder aside)."""
    try:
        cid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, ValueError):
        raise ConfigError("node_config", dict(node_config), "partition-id=<int> num-partitions=<int>") from None
    data_dir, pinned = str(node_config.get("data-dir", "")), str(node_config.get("config", ""))
    key = (cfg_toml, data_dir, pinned, tuple((name, id(step)) for name, step in (steps or {}).items()))
    if key not in _clients:
        import tomllib

        cfg = Config.model_validate(tomllib.loads(cfg_toml))
        if pinned and without_data_dir(load_config(pinned, check_paths=False)) != without_data_dir(cfg):
            raise ConfigError("config", str(pinned), "the same config as the server's (this client pinned its own copy)")
        if data_dir:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": data_dir})})
        check_deployable(cfg)
        _clients.clear()
        _clients[key] = cfg, ClientSide.from_config(cfg, steps)
    cfg, side = _clients[key]
    n = len(side.data.train)
    if parts != n or not 0 <= cid < n:
        raise ConfigError("node_config", f"partition-id={cid} num-partitions={parts}",
                          f"num-partitions = federated.n_clients = {n}, 0 <= partition-id < {n}")
    return cfg, side, cid


def client_key_path(cfg: Config, node_config: dict[str, Any], cid: int) -> Path | None:
    """The client's Ed25519 key file: node_config `key` (a PEM path), else `<ledger.client_keys>/<id>.pem`."""
    path = node_config.get("key") or (Path(cfg.ledger.client_keys) / f"{cid}.pem" if cfg.ledger.client_keys else None)
    return None if path is None or not Path(path).is_file() else Path(path)


def client_update(header: dict[str, Any], params: Params, node_config: dict[str, Any], state: RecordDict,
                  protocol: dict[str, Any] | None = None, steps: dict[str, ClientStep] | None = None) -> RecordDict:
    """One client's round: local procedure → the client steps (privatize, compress, sign).
    `state` is the node's Flower context state, which keeps the steps' state between rounds.
    With `protocol` (secure aggregation's public parameters) the update stays on the node
    and the reply carries the client's AdvertiseKeys instead (secagg.py)."""
    cfg, side, cid = client_side(str(header["config"]), node_config, steps)
    if int(header["client"]) != cid:
        raise ConfigError("partition-id", cid, f"the client the server addressed ({header['client']})")
    r, attempt = int(header["round"]), int(header["attempt"])
    use_threads(cfg, side.training.batching)  # the in-process rule: same thread count, same float rounding
    gen, seed = generator(cfg.run.seed, r, attempt, CLIENT + cid), cfg.privacy.noise_seed
    delta = side.training.deltas([cid], params, gen, lambda c: None if seed is None else rng_for(seed, r, c + 1))[cid]
    if isinstance(delta, Exception):
        raise delta
    key = client_key_path(cfg, node_config, cid)
    pipeline = side.pipeline(cfg, lambda _: key)
    if protocol is not None:  # the masked input is signed instead, in its own phase
        pipeline = pipeline.without("sign")
    states = {n: state[STEP_STATE + n].to_torch_state_dict() for n in pipeline.steps if STEP_STATE + n in state}
    ctx = StepContext(params, r, attempt, gen, lambda c: rng_for(seed, r, c + 1), float(header["clip_norm"]),
                      str(header["run_id"]))
    upload, states = pipeline(Upload(cid, delta), states, ctx)
    for name, value in states.items():
        if isinstance(value, dict):
            state[STEP_STATE + name] = ArrayRecord(torch_state_dict=value)
    weight = float(getattr(side.data.train[cid], "n_examples", 1))
    if protocol is not None:
        update = check_update(str(cid), upload.data, params)  # the client's own check: nobody else sees Δ
        row = update if side.client_dp is None else side.client_dp.row(update, upload.report)
        advert = secagg.start(state, protocol, cid, row, {"round": r, "attempt": attempt, "key": str(key or "")})
        return train_reply(cid, Reply(advert, weight))
    return train_reply(cid, Reply(upload.data, weight, upload.report, upload.signed))


class ClientHandlers:
    """The ClientApp's message handlers; `steps`: extra client steps (as given to `Runtime`)."""

    def __init__(self, steps: dict[str, ClientStep] | None = None):
        self.steps = dict(steps or {})

    def train(self, msg: Message, context: Context) -> Message:
        params = msg.content[PARAMS].to_torch_state_dict()  # name -> tensor
        protocol = dict(msg.content[PROTOCOL]) if PROTOCOL in msg.content else None
        reply = client_update(dict(msg.content[HEADER]), params, dict(context.node_config), context.state, protocol,
                              self.steps)
        return Message(reply, reply_to=msg)

    def secagg(self, msg: Message, context: Context) -> Message:
        """Secure aggregation's phases 1-3 on the node; the masked input is signed like an update."""
        kind, mine = msg.metadata.message_type, context.state.get(secagg.SECAGG)
        data = secagg.step(kind, context.state, msg.content)
        signed = None
        if kind == MASKED_INPUT and (run_id := str(msg.content[PAYLOAD].get("run_id", ""))) and str(mine["key"]):
            key = load_private_key(Path(str(mine["key"])))
            signed = sign_update(key, run_id, int(mine["round"]), str(int(mine["client"])), data, int(mine["attempt"]))
        return Message(train_reply(int(mine["client"]), Reply(data, 0.0, 0.0, signed)), reply_to=msg)

    def query(self, msg: Message, context: Context) -> Message:
        _, _, cid = client_side(str(msg.content[HEADER]["config"]), dict(context.node_config), self.steps)
        return Message(RecordDict({HEADER: ConfigRecord({"client": cid})}), reply_to=msg)


def make_client_app(steps: dict[str, ClientStep] | None = None) -> ClientApp:
    """A ClientApp whose clients also run `steps` (a module of the owner's, named in its
    pyproject's `clientapp`); `client_app` is the one without extra steps."""
    handlers, app = ClientHandlers(steps), ClientApp()
    app.train()(handlers.train)
    for kind in (SHARE_KEYS, MASKED_INPUT, UNMASK):
        app.train(kind.split(".")[1])(handlers.secagg)
    app.query()(handlers.query)
    return app


_handlers = ClientHandlers()
client_train, client_secagg, client_query = _handlers.train, _handlers.secagg, _handlers.query
client_app = make_client_app()

__all__ = ["ClientHandlers", "FlowerTransport", "check_deployable", "client_app", "make_client_app", "server_app"]
