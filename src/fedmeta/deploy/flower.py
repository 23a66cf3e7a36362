"""Federated runs on Flower's deployment runtime (flwr ≥ 1.41, Message API): a `ServerApp`
and a `ClientApp` over the same stages as the in-process runtime (README, "Federated runs": one
round's data flow); only the transport differs.

The server is a `Simulation` whose `collect` reaches real clients: it samples client ids
exactly as in-process, then sends each sampled client ONE `train` message (global
parameters + round header) and gets ONE reply (the encoded, privatized, optionally signed
update and its weight). Everything after that — signature and `check_update` validation,
`Aggregation` (DP / robust sums), the strategy, the accountant, the ledger, checkpoints,
metrics, evaluation — is `run_federated` unchanged. One `query` message per node at the
start maps Flower node ids to client ids (the node's `partition-id`). With secure
aggregation (SecAgg / SecAgg+) a round is four exchanges driving the protocol's state
machines (`secagg.py`), and the server passes only the unmasked sum to `Aggregation`.

A client builds the same `Simulation` from the config the server sends, picks its own
client (`partition-id` of its supernode's `node_config`), draws its episodes from its own
stream (seed, round, attempt, client) and runs the shared client step
(`Simulation.local_deltas`, `Simulation.client_message`, `sign_update`). Seeded noise is
per (round, client) in both runtimes, so example-level DP runs with a fixed seed give the
same parameters here and in-process; other procedures draw the same client sample but
different episodes (in-process draws all clients' episodes from one round stream).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp

from fedmeta.config import Config, load_config
from fedmeta.deploy import secagg
from fedmeta.deploy.secagg import MASKED_INPUT, PAYLOAD, PROTOCOL, SHARE_KEYS, UNMASK
from fedmeta.errors import ConfigError, FedmetaError
from fedmeta.federated.flatten import unflatten
from fedmeta.federated.secure import GRAPHS, threshold_for
from fedmeta.federated.simulation import Collected, NotEnoughClients, Simulation, run_federated
from fedmeta.federated.validation import check_update
from fedmeta.ledger.commitments import SignedUpdate, sign_update
from fedmeta.ledger.keys import load_private_key
from fedmeta.meta import Params
from fedmeta.privacy.secagg.protocol import SecAggAbort, SecAggConfig, SecAggServer
from fedmeta.threads import use_threads

log = logging.getLogger("fedmeta.deploy")

TRAIN, QUERY = "train", "query"
CLIENT_STREAM = 4  # generator streams 0-3 belong to the in-process runtime
HEADER, PARAMS, UPDATE = "header", "params", "update"
CODEC = "fedmeta.codec"  # a client's compression state (top-k residual) in its Flower context


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
def train_request(cfg_toml: str, params: Params, round_: int, attempt: int, cid: int, run_id: str | None,
                  aggregation: dict[str, Any]) -> RecordDict:
    """`aggregation`: the server's `Aggregation.state_dict()` (adaptive clipping's current C)."""
    header = {"config": cfg_toml, "round": round_, "attempt": attempt, "client": cid, "run_id": run_id or "",
              "aggregation": json.dumps(aggregation)}
    return RecordDict({HEADER: ConfigRecord(header), PARAMS: ArrayRecord(torch_state_dict=params)})


def train_reply(cid: int, data: bytes, weight: float, report: float, signed: SignedUpdate | None) -> RecordDict:
    body: dict[str, Any] = {"client": cid, "data": data, "weight": weight, "report": report}
    if signed is not None:
        body.update({f"signed.{k}": v for k, v in signed.to_dict().items()})
    return RecordDict({UPDATE: ConfigRecord(body)})


def read_reply(content: RecordDict) -> tuple[int, bytes, float, float, SignedUpdate | None]:
    body = content[UPDATE]
    fields = {k.removeprefix("signed."): v for k, v in body.items() if k.startswith("signed.")}
    signed = SignedUpdate.from_dict(fields) if fields else None
    return int(body["client"]), bytes(body["data"]), float(body["weight"]), float(body["report"]), signed


# -- server ----------------------------------------------------------------------------------
class FlowerRuntime(Simulation):
    """The in-process runtime with `collect` over a Flower `Grid`: same sampling, same
    server stages; the clients' work happens on their supernodes."""

    holds_client_keys = False  # clients sign on their own machines; the server has public keys only

    def __init__(self, cfg: Config, grid: Grid, *, min_nodes: int, wait: float = 300.0, deadline: float = 3600.0):
        check_deployable(cfg)
        super().__init__(cfg)
        self.grid, self.deadline, self.toml = grid, deadline, cfg.to_toml()
        self.nodes = self.register(min_nodes, wait)  # client id -> node id
        self.costs: dict[str, Any] = {}  # the last secure round's

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

    @property
    def secure(self) -> bool:
        return self.cfg.privacy.secure_aggregation in GRAPHS

    def collect(self, round_: int, attempt: int = 0) -> Collected:
        sampled = self.sample_clients(self.generator(round_, attempt))
        dropped = {c: "no supernode holds this client" for c in sampled if c not in self.nodes}
        if self.secure:
            return self.collect_secure(round_, attempt, sampled, dropped)
        asks = {c: self.train_request(round_, attempt, c) for c in sampled if c in self.nodes}
        messages, weights, reports, signed = {}, {}, {}, {}
        for cid, content in self.exchange(TRAIN, asks, f"{round_}.{attempt}", dropped).items():
            _, messages[cid], weights[cid], reports[cid], signed[cid] = read_reply(content)
        return Collected(messages, weights, sampled, dropped, attempt, signed, reports)

    def train_request(self, round_: int, attempt: int, cid: int) -> RecordDict:
        run_id = getattr(self, "run_id", None) if self.signing is not None else None
        return train_request(self.toml, self.params, round_, attempt, cid, run_id, self.aggregation.state_dict())

    def exchange(self, kind: str, asks: dict[int, RecordDict], group: str, dropped: dict[int, str]) -> dict[int, RecordDict]:
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
    def collect_secure(self, round_: int, attempt: int, sampled: list[int], dropped: dict[int, str]) -> SecureCollected:
        """Drive `SecAggServer` over the four exchanges (secagg.py); a client silent in a
        phase is dropped from it on; below threshold the protocol aborts and the round is short."""
        out, group = SecureCollected({}, {}, sampled, dropped, attempt), f"{round_}.{attempt}"
        clients = [c for c in sampled if c in self.nodes]
        if not clients:
            return out
        template = secagg.in_order(self.aggregation.secure_row(self.params, 0.0))
        config = SecAggConfig(clients=tuple(clients), threshold=threshold_for(len(clients)),
                              dim=sum(t.numel() for t in template.values()) + 1, clip=self.aggregation.secure_clip,
                              neighbourhood=GRAPHS[self.cfg.privacy.secure_aggregation], session=secrets.token_bytes(16))
        header, server = secagg.config_header(config, group), SecAggServer(config)
        costs = out.costs = {"secagg_bytes_up": [0] * 4, "secagg_bytes_down": [0] * 4, "secagg_exchange_seconds": [0.0] * 4}

        def run(phase: int, kind: str, to: dict[int, bytes], extra: dict[int, dict[str, Any]] | None = None) -> dict[int, tuple]:
            start = time.perf_counter()
            asks = {c: secagg.request(header, m, **(extra or {}).get(c, {})) for c, m in to.items()}
            replies = {c: read_reply(r) for c, r in self.exchange(kind, asks, group, dropped).items()}
            costs["secagg_exchange_seconds"][phase] = round(time.perf_counter() - start, 3)
            costs["secagg_bytes_down"][phase] = sum(len(m) for m in to.values())
            costs["secagg_bytes_up"][phase] = sum(len(r[1]) for r in replies.values())
            return replies

        try:
            start = time.perf_counter()
            asks = {c: self.train_request(round_, attempt, c) for c in clients}
            for body in asks.values():
                body[PROTOCOL] = ConfigRecord(header)
            adverts = {c: read_reply(r) for c, r in self.exchange(TRAIN, asks, group, dropped).items()}
            costs["secagg_exchange_seconds"][0] = round(time.perf_counter() - start, 3)
            costs["secagg_bytes_up"][0] = sum(len(r[1]) for r in adverts.values())
            out.weights = {c: r[2] for c, r in adverts.items()}
            to = server.collect_keys({c: r[1] for c, r in adverts.items()})
            shares = run(1, SHARE_KEYS, to)
            to = server.collect_shares({c: r[1] for c, r in shares.items()})
            live = [c for c in out.weights if c in to]
            scaled = dict(zip(live, self.aggregation.secure_weights([out.weights[c] for c in live]), strict=True))
            run_id = getattr(self, "run_id", None) if self.signing is not None else None
            masked = run(2, MASKED_INPUT, to, {c: {"weight": scaled[c], "run_id": run_id or ""} for c in to})
            accepted = {}
            for c, (_, data, _, _, signed) in masked.items():
                out.messages[c], out.signed[c] = data, signed
                if (refusal := self.check_signature(c, data, signed, attempt)) is not None:  # dropped from the sum
                    out.rejected[c] = f"{refusal['reason']}: {refusal['detail']}"
                    out.refused.append(refusal)
                    continue
                accepted[c] = data
            to = server.collect_masked(accepted)
            total = server.unmask({c: r[1] for c, r in run(3, UNMASK, to).items()})  # (dim,)
        except SecAggAbort as err:
            log.warning("round %d attempt %d: %s", round_, attempt, err)
            for c in clients:
                dropped.setdefault(c, f"secure aggregation aborted: {err}")
            return out
        out.total, out.weight, out.included = unflatten(total[:-1], template), float(total[-1]), server.survivors
        costs.update(secagg_server_seconds=round(server.stats.total_seconds, 4), secagg_included=len(server.survivors))
        return out

    def aggregate(self, collected: Collected) -> tuple[Params, dict[int, str]]:
        """With secure aggregation: Δ from the unmasked sum through the same `Aggregation`
        (DP noise, adaptive clipping, division), then the strategy."""
        if not isinstance(collected, SecureCollected):
            return super().aggregate(collected)
        self.refused = collected.refused
        if collected.total is None or len(collected.included) < self.min_usable:
            raise NotEnoughClients(len(collected.included), len(collected.sampled))
        delta = self.aggregation.from_secure_sum(collected.total, collected.weight, self.noise_rng(self.round + 1, 0))
        delta = {k: v.to(self.params[k].dtype) for k, v in delta.items()}
        new, self.server_state = self.strategy.apply(self.params, delta, self.server_state)
        self.costs = collected.costs
        return new, collected.rejected

    def secagg_costs(self) -> dict[str, Any]:
        """Per exchange (train/advertise, share_keys, masked_input, unmask): protocol bytes
        each way and wall seconds; the server's own protocol seconds."""
        return self.costs if self.secure else super().secagg_costs()


@dataclass
class SecureCollected(Collected):
    """A securely aggregated round: `messages` are the masked inputs (hashed into the ledger),
    `total`/`weight` the unmasked Σ w·row and Σ w (None: the protocol aborted)."""

    total: Params | None = None
    weight: float = 0.0
    included: frozenset[int] = frozenset()
    rejected: dict[int, str] = field(default_factory=dict)
    refused: list[dict[str, Any]] = field(default_factory=list)
    costs: dict[str, Any] = field(default_factory=dict)


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
    sim = FlowerRuntime(cfg, grid, min_nodes=min_nodes, wait=wait, deadline=deadline)
    run_federated(cfg, run, resume=resume, show_progress=False, sim=sim)
    write_report(run.path)


# -- client ----------------------------------------------------------------------------------
_runtimes: dict[tuple[str, str, str], Simulation] = {}  # one entry: the config this process serves


def without_data_dir(cfg: Config) -> Config:
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": None})})


def client_runtime(cfg_toml: str, node_config: dict[str, Any]) -> tuple[Simulation, int]:
    """This supernode's runtime (the config's stages and its own data) and client id. An
    owner that pinned its own copy of the config (node_config `config`, a TOML path)
    refuses any other config from the server (its data folder aside)."""
    try:
        cid, parts = int(node_config["partition-id"]), int(node_config["num-partitions"])
    except (KeyError, ValueError):
        raise ConfigError("node_config", dict(node_config), "partition-id=<int> num-partitions=<int>") from None
    data_dir, pinned = str(node_config.get("data-dir", "")), str(node_config.get("config", ""))
    key = (cfg_toml, data_dir, pinned)
    if key not in _runtimes:
        import tomllib

        cfg = Config.model_validate(tomllib.loads(cfg_toml))
        if pinned and without_data_dir(load_config(pinned, check_paths=False)) != without_data_dir(cfg):
            raise ConfigError("config", str(pinned), "the same config as the server's (this client pinned its own copy)")
        if data_dir:
            cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"data_dir": data_dir})})
        check_deployable(cfg)
        _runtimes.clear()
        _runtimes[key] = Simulation(cfg)
    sim = _runtimes[key]
    n = len(sim.data.train)
    if parts != n or not 0 <= cid < n:
        raise ConfigError("node_config", f"partition-id={cid} num-partitions={parts}",
                          f"num-partitions = federated.n_clients = {n}, 0 <= partition-id < {n}")
    return sim, cid


def client_key_path(sim: Simulation, node_config: dict[str, Any], cid: int) -> Path | None:
    """The client's Ed25519 key file: node_config `key` (a PEM path), else `<ledger.client_keys>/<id>.pem`."""
    path = node_config.get("key") or (
        Path(sim.cfg.ledger.client_keys) / f"{cid}.pem" if sim.cfg.ledger.client_keys else None)
    return None if path is None or not Path(path).is_file() else Path(path)


def client_update(header: dict[str, Any], params: Params, node_config: dict[str, Any], state: RecordDict,
                  protocol: dict[str, Any] | None = None) -> RecordDict:
    """One client's round: local update → DP stage → wire encoding → signature. `state` is
    the node's Flower context state, which keeps its compression residual between rounds.
    With `protocol` (secure aggregation's public parameters) the update stays on the node
    and the reply carries the client's AdvertiseKeys instead (secagg.py)."""
    sim, cid = client_runtime(str(header["config"]), node_config)
    if int(header["client"]) != cid:
        raise ConfigError("partition-id", cid, f"the client the server addressed ({header['client']})")
    r, attempt = int(header["round"]), int(header["attempt"])
    use_threads(sim.cfg, sim.batching)  # the in-process rule: same thread count, same float rounding
    sim.params = params
    sim.aggregation.load_state_dict(json.loads(str(header["aggregation"])))
    sim.codec_state = {cid: state[CODEC].to_torch_state_dict()} if CODEC in state else {}
    gen = sim.generator(r, attempt, stream=CLIENT_STREAM + cid)
    delta = sim.local_deltas([cid], gen, r)[cid]
    if isinstance(delta, Exception):
        raise delta
    data, report = sim.client_message(cid, r, delta, gen)
    if isinstance(residual := sim.codec_state[cid], dict):
        state[CODEC] = ArrayRecord(torch_state_dict=residual)
    weight = float(getattr(sim.data.train[cid], "n_examples", 1))
    key = client_key_path(sim, node_config, cid)
    if protocol is not None:
        update = check_update(str(cid), data, params)  # the client's own check: nobody else sees Δ
        row = sim.aggregation.secure_row(update, report)
        advert = secagg.start(state, protocol, cid, row, {"round": r, "attempt": attempt, "key": str(key or "")})
        return train_reply(cid, advert, weight, 0.0, None)
    signed = None if key is None or not header["run_id"] else sign_update(load_private_key(key), str(header["run_id"]), r, str(cid), data, attempt)
    return train_reply(cid, data, weight, report, signed)


client_app = ClientApp()


@client_app.train()
def client_train(msg: Message, context: Context) -> Message:
    params = msg.content[PARAMS].to_torch_state_dict()  # name -> tensor
    protocol = dict(msg.content[PROTOCOL]) if PROTOCOL in msg.content else None
    reply = client_update(dict(msg.content[HEADER]), params, dict(context.node_config), context.state, protocol)
    return Message(reply, reply_to=msg)


def client_secagg(msg: Message, context: Context) -> Message:
    """Secure aggregation's phases 1-3 on the node; the masked input is signed like an update."""
    kind, mine = msg.metadata.message_type, context.state.get(secagg.SECAGG)
    data = secagg.step(kind, context.state, msg.content)
    signed = None
    if kind == MASKED_INPUT and (run_id := str(msg.content[PAYLOAD].get("run_id", ""))) and str(mine["key"]):
        key = load_private_key(Path(str(mine["key"])))
        signed = sign_update(key, run_id, int(mine["round"]), str(int(mine["client"])), data, int(mine["attempt"]))
    return Message(train_reply(int(mine["client"]), data, 0.0, 0.0, signed), reply_to=msg)


for _kind in (SHARE_KEYS, MASKED_INPUT, UNMASK):
    client_app.train(_kind.split(".")[1])(client_secagg)


@client_app.query()
def client_query(msg: Message, context: Context) -> Message:
    _, cid = client_runtime(str(msg.content[HEADER]["config"]), dict(context.node_config))
    return Message(RecordDict({HEADER: ConfigRecord({"client": cid})}), reply_to=msg)


__all__ = ["FlowerRuntime", "check_deployable", "client_app", "server_app"]
