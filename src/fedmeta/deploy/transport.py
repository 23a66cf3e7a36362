"""The runtime's transport over Flower (flwr ≥ 1.41, Message API): the server's side of a
deployed round. Sampling, admission, aggregation, the strategy, the accountant and the
ledger are the runtime's own (docs/architecture.md); this file only moves messages.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import Any

import torch
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.serverapp import Grid

from fedmeta.config import Config
from fedmeta.data.table import configured_schema, schema_sha256
from fedmeta.deploy import ckks, secagg
from fedmeta.deploy.messages import (
    EVALUATE,
    FIGURES,
    HEADER,
    PARAMS,
    QUERY,
    TRAIN,
    check_deployable,
    params_records,
    read_reply,
    train_request,
)
from fedmeta.deploy.secagg import MASKED_INPUT, PROTOCOL, SHARE_KEYS, UNMASK
from fedmeta.errors import FedmetaError
from fedmeta.federated.evaluation import MAX_TRAIN_CLIENTS
from fedmeta.federated.secure import GRAPHS, threshold_for
from fedmeta.federated.transport import Broadcast, Replies, Reply, Summed
from fedmeta.params import Params, unflatten
from fedmeta.privacy.secagg.protocol import SecAggAbort, SecAggConfig, SecAggServer

log = logging.getLogger("fedmeta.deploy")


HELD = "held: "  # a refusal because a live node holds the client: the newcomer is asked again later


class FlowerTransport:
    """The runtime's transport over a Flower `Grid`: each sampled client with a supernode gets
    ONE `train` message (global parameters + round header) and sends ONE reply (its update
    from the shared client pipeline); with secure aggregation, four exchanges drive the
    protocol and the server learns the sum only. Clients sign on their own machines."""

    def __init__(self, cfg: Config, grid: Grid, *, min_nodes: int, wait: float = 300.0, deadline: float = 3600.0,
                 data: Any = None):
        check_deployable(cfg)
        self.grid, self.deadline, self.toml = grid, deadline, cfg.to_toml()
        self.run_key = ""  # the fedmeta run's id (the driver sets it): clients key their saved state by it
        self.neighbourhood = cfg.privacy.secure_aggregation
        self.adverts: dict[int, tuple[bytes, bytes]] = {}  # CKKS: client -> its node's X25519 key, signature
        self.deal: ckks.Deal | None = None  # CKKS: the clients' keys as dealt (None: deal before the next round)
        self.installed: dict[int, bytes] = {}  # CKKS: client -> the deal (key id) its node installed
        self.signs = bool(cfg.ledger.participants)
        self.schema = configured_schema(cfg.data)
        self.data = data  # the runtime's clients: for a table whose rows stay with their owners, their names
        self.evaluators: dict[str, dict[int, int]] = {"train": {}, "test": {}}  # owners: split -> index -> node
        self.owners: dict[str, dict[str, Any]] = {}  # owner name -> its schema's SHA-256 and rows (the ledger's)
        self.nodes = self.register(min_nodes, wait)  # client id -> node id

    def join(self, node: int, body: dict[str, Any], nodes: dict[int, int], alive: set[int] | None = None) -> str | None:
        """Admit a supernode's answer to the query; the reason when it is refused. `alive`
        (the nodes connected now, when a node joins mid-run): a client or owner whose node
        is no longer among them passes to the new node (a supernode restarted)."""
        cid = int(body["client"])
        gone = (lambda n: n not in alive) if alive is not None else (lambda n: False)  # noqa: E731
        if "split" in body:  # an owner of its own table rows
            split, index = str(body["split"]), int(body["index"])
            expected = schema_sha256(self.schema) if self.schema is not None else None
            if body["schema_sha256"] != expected:
                return f"its rows were read with another schema (sha256 {body['schema_sha256']}, the run's {expected})"
            if index in self.evaluators[split] and not gone(self.evaluators[split][index]):
                return f"{HELD}supernode {self.evaluators[split][index]} already holds this owner ({split} {index})"
            self.evaluators[split][index] = node
            if self.data is not None:
                name = self.data.client_at(split, index).name
                self.owners[name] = {"schema_sha256": str(body["schema_sha256"]), "rows": int(body["rows"])}
            if cid < 0:
                return None
        if cid in nodes and not gone(nodes[cid]):
            if alive is not None:
                return f"{HELD}supernode {nodes[cid]} already holds client {cid} (partition-id)"
            raise FedmetaError(f"supernodes {nodes[cid]} and {node} both hold client {cid} (partition-id)")
        nodes[cid] = node
        if "kx" in body:  # a new node of a CKKS run: the keys are dealt again, to its key too
            self.adverts[cid], self.deal = (bytes(body["kx"]), bytes(body["kx_signature"])), None
            self.installed.pop(cid, None)
        return None

    def query(self, ids: list[int], timeout: float, nodes: dict[int, int], alive: set[int] | None = None) -> dict[int, str]:
        """Ask each of `ids` which client it is and admit the answers into `nodes`; the
        refused nodes with the reason."""
        header = ConfigRecord({"config": self.toml})
        asks = [Message(RecordDict({HEADER: header}), dst_node_id=n, message_type=QUERY) for n in ids]
        refused: dict[int, str] = {}
        received = self.grid.send_and_receive(asks, timeout=timeout)
        by_message = {m.metadata.message_id: m.metadata.dst_node_id for m in asks if m.metadata.message_id}
        for reply in received:
            node = by_message.get(reply.metadata.reply_to_message_id, reply.metadata.src_node_id)
            if reply.has_error():
                refused[node] = reply.error.reason
                log.warning("supernode %d refused to join: %s", node, reply.error.reason)
                continue
            if (why := self.join(node, dict(reply.content[HEADER]), nodes, alive)) is not None:
                refused[node] = why
                log.warning("supernode %d refused: %s", node, why)
        return refused

    def rejoin(self) -> None:
        """Before a round: a supernode that connected since (a restarted one has a new node
        id) is asked which client it is, once, and takes over that client from its gone node."""
        alive = set(self.grid.get_node_ids())
        new = sorted(alive - self.known)
        if not new:
            return
        refused = self.query(new, self.deadline, self.nodes, alive)
        # asked again next round: the node it would replace may not have timed out yet
        self.known |= {n for n in new if not refused.get(n, "").startswith(HELD)}
        log.info("clients on supernodes: %s", dict(sorted(self.nodes.items())))

    def register(self, min_nodes: int, wait: float) -> dict[int, int]:
        """Wait for `min_nodes` supernodes, then ask each which client it is (one exchange);
        an owner of its own rows also says where it evaluates and its schema's hash."""
        stop = time.monotonic() + wait
        while len(ids := list(self.grid.get_node_ids())) < min_nodes:
            if time.monotonic() > stop:
                raise FedmetaError(f"{len(ids)} of {min_nodes} supernodes connected after {wait:.0f} s")
            time.sleep(1.0)
        nodes: dict[int, int] = {}
        refused = self.query(ids, wait, nodes)
        self.known = set(ids)  # every node asked once; a node id new later joins mid-run (`rejoin`)
        if not nodes:  # nothing to train with: say why, rather than fail every round
            why = "; ".join(f"supernode {n}: {r}" for n, r in sorted(refused.items())) or f"no answer in {wait:.0f} s"
            raise FedmetaError(f"no supernode joined the run ({len(ids)} asked): {why}")
        log.info("clients on supernodes: %s", dict(sorted(nodes.items())))
        return nodes

    def exchange(self, round_: int, attempt: int, sampled: list[int], b: Broadcast) -> Replies:
        self.rejoin()
        out = Replies(sampled, attempt, dropped={c: "no supernode holds this client" for c in sampled if c not in self.nodes})
        clients = [c for c in sampled if c in self.nodes]
        asks = {c: train_request(self.toml, b, round_, attempt, c, self.run_key) for c in clients}
        if self.neighbourhood in GRAPHS:
            return self.exchange_secure(round_, attempt, clients, asks, b, out)
        if self.neighbourhood == "ckks":
            return self.exchange_ckks(round_, attempt, clients, asks, b, out)
        for cid, content in self.send(TRAIN, asks, f"{round_}.{attempt}", out.dropped).items():
            out.replies[cid] = read_reply(content)[1]
        return out

    def evaluate(self, split: str, params: Params) -> dict[str, torch.Tensor]:
        """The owners' own personalization figures (metric -> one value per owner, in index
        order): each evaluates on its rows, only its figures come back."""
        self.rejoin()
        nodes = {i: n for i, n in self.evaluators[split].items() if i < MAX_TRAIN_CLIENTS}
        layout, record = params_records(params)
        header = ConfigRecord({"config": self.toml, "split": split, **layout})
        asks = {i: RecordDict({HEADER: header, PARAMS: record}) for i in sorted(nodes)}
        dropped: dict[int, str] = {}
        replies = self.send(EVALUATE, asks, f"evaluate.{split}", dropped, nodes)
        for i, why in sorted(dropped.items()):
            log.warning("evaluation (%s): owner %d gave no figures: %s", split, i, why)
        if not replies:
            raise FedmetaError(f"no owner answered the {split} evaluation ({len(nodes)} asked)")
        figures = [dict(replies[i][FIGURES]) for i in sorted(replies)]
        return {k: torch.tensor([float(f[k]) for f in figures]) for k in figures[0]}

    def send(self, kind: str, asks: dict[int, RecordDict], group: str, dropped: dict[int, str],
             nodes: dict[int, int] | None = None) -> dict[int, RecordDict]:
        """Send each client its message, return the replies by client; a client whose
        ClientApp raised, whose supernode is gone (the superlink answers for it) or that
        missed the deadline goes to `dropped`. A reply is matched to its client by the
        message it answers, else by its sender; one that matches no client asked here is
        ignored. `nodes`: whom the keys of `asks` name (default: the clients' supernodes)."""
        nodes = self.nodes if nodes is None else nodes
        sent = {c: Message(body, dst_node_id=nodes[c], message_type=kind, group_id=group) for c, body in asks.items()}
        client_of = {n: c for c, n in nodes.items() if c in asks}
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

    # -- CKKS: keys dealt by a client, three exchanges, the server adds ciphertexts -----------
    def deal_keys(self) -> ckks.Deal:
        """Ask the lowest client id that answers to deal the run's CKKS keys (ckks.py)."""
        header = ConfigRecord({"config": self.toml})
        adverts = ckks.adverts_record(self.adverts)
        tried: dict[int, str] = {}
        for dealer in sorted(c for c in self.adverts if c in self.nodes):
            replies = self.send(ckks.DEAL, {dealer: RecordDict({HEADER: header, ckks.CKKS: adverts})}, "deal", tried)
            if dealer in replies:
                deal = ckks.Deal.read(replies[dealer])
                for c, why in sorted(deal.refused.items()):
                    log.warning("client %d gets no CKKS key: %s", c, why)
                log.info("CKKS keys dealt by client %d to %d clients", dealer, len(deal.wraps))
                self.installed = {}
                return deal
            log.warning("client %d did not deal the CKKS keys: %s", dealer, tried[dealer])
        raise FedmetaError(f"no client dealt the CKKS keys ({'; '.join(f'client {c}: {w}' for c, w in tried.items())})")

    def exchange_ckks(self, round_: int, attempt: int, clients: list[int], asks: dict[int, RecordDict],
                      b: Broadcast, out: Replies) -> Replies:
        """train (keys installed on the way; the update stays on the node) → encrypt → the
        server adds the ciphertexts → one client of the round decrypts the sum."""
        if self.deal is None:
            self.deal = self.deal_keys()
        deal, tag, group = self.deal, f"{round_}.{attempt}", f"{round_}.{attempt}"
        out.summed = Summed(None, 0.0, frozenset())
        template = secagg.in_order(b.aggregation.row(b.params, 0.0))
        dim = sum(t.numel() for t in template.values()) + 1
        costs = out.costs = {"he_bytes_up": 0, "he_key_bytes_down": 0, "he_exchange_seconds": [0.0] * 3}
        for c in clients:
            if c not in deal.wraps:
                out.dropped[c] = f"no CKKS key: {deal.refused.get(c, 'not dealt to this client')}"
                continue
            asks[c][ckks.CKKS] = ConfigRecord({"tag": tag, "key_id": deal.key_id})
            if self.installed.get(c) != deal.key_id:
                asks[c][ckks.INSTALL] = deal.install_record(c)
                costs["he_key_bytes_down"] += sum(len(v) for v in asks[c][ckks.INSTALL].values() if isinstance(v, bytes))
        start = time.perf_counter()
        weights = {c: read_reply(r)[1].weight
                   for c, r in self.send(TRAIN, {c: a for c, a in asks.items() if c in deal.wraps}, group, out.dropped).items()}
        self.installed.update(dict.fromkeys(weights, deal.key_id))
        costs["he_exchange_seconds"][0] = round(time.perf_counter() - start, 3)
        if len(weights) < 2:  # a sum of one would be that client's update
            return self.ckks_abort(out, group, clients, f"{len(weights)} client(s) trained, a CKKS sum needs 2")
        start = time.perf_counter()
        scaled = dict(zip(weights, b.aggregation.weights(list(weights.values())), strict=True))
        header = {"tag": tag, "key_id": deal.key_id, "clients": len(weights), "run_id": b.run_id}
        encrypted = {c: read_reply(r)[1] for c, r in self.send(
            ckks.ENCRYPT, {c: RecordDict({ckks.CKKS: ConfigRecord({**header, "weight": scaled[c]})}) for c in weights},
            group, out.dropped).items()}
        costs["he_exchange_seconds"][1] = round(time.perf_counter() - start, 3)
        accepted = self.signed_inputs(encrypted, b, out)
        costs["he_bytes_up"] = sum(len(d) for d in accepted.values())
        start = time.perf_counter()
        aggregate, bad = ckks.add(deal.server_context, accepted, dim)
        costs["he_server_seconds"] = round(time.perf_counter() - start, 4)
        for c, why in bad.items():
            out.dropped[c] = why
            del accepted[c]
        if len(accepted) < 2:
            return self.ckks_abort(out, group, clients, f"{len(accepted)} encrypted update(s), a CKKS sum needs 2")
        start = time.perf_counter()
        total, asked = None, {}
        for c in sorted(accepted):  # the first client of the sum that answers decrypts it
            ask = RecordDict({ckks.CKKS: ConfigRecord({**header, "data": aggregate, "count": len(accepted)})})
            reply = self.send(ckks.DECRYPT, {c: ask}, group, asked).get(c)
            if reply is not None:
                total = ckks.plaintext(read_reply(reply)[1].data, dim)
                break
            log.warning("round %s: client %d did not decrypt the CKKS sum: %s", group, c, asked[c])
        costs["he_exchange_seconds"][2] = round(time.perf_counter() - start, 3)
        if total is None:
            return self.ckks_abort(out, group, clients, "no client of the sum decrypted it")
        out.summed = Summed(unflatten(torch.from_numpy(total[:-1]), template), float(total[-1]), frozenset(accepted))
        costs["he_included"] = len(accepted)
        return out

    @staticmethod
    def signed_inputs(replies: dict[int, Reply], b: Broadcast, out: Replies) -> dict[int, bytes]:
        """The masked or encrypted inputs whose signatures check out; a refused one is
        recorded and left out of the sum."""
        accepted = {}
        for c, reply in replies.items():
            out.replies[c] = reply
            if (refusal := b.check_signature(c, reply.data, reply.signed)) is not None:
                out.refused[c] = refusal
                continue
            accepted[c] = reply.data
        return accepted

    @staticmethod
    def ckks_abort(out: Replies, group: str, clients: list[int], why: str) -> Replies:
        log.warning("round %s: CKKS sum aborted: %s", group, why)
        for c in clients:
            out.dropped.setdefault(c, f"CKKS sum aborted: {why}")
        return out

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
            accepted = self.signed_inputs(masked, b, out)
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
