"""The in-process federated runtime: many clients simulated in one process.

One round: sample clients → each surviving client draws episodes
from its own data and runs its local procedure → encodes its update (optionally
compressed) to bytes → the server checks every update, takes the example-weighted mean
and applies the server strategy. Clients that drop out, straggle past the deadline or
fail are left out of the round; a round with fewer than `min_clients` usable updates is
retried with a fresh sample, then the run stops with a clear error.

Clients sharing an architecture and procedure are batched with `torch.func.vmap` (in
chunks) or looped, by measurement (`federated.clients.batching = "auto"`: vmap for MLPs). Every
random draw of round r comes from a generator seeded by (seed, r, attempt), so a run
resumed from its checkpoint repeats exactly what an uninterrupted run would do.
"""

from __future__ import annotations

import hashlib
import logging
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.func import vmap

from fedmeta.config import Config
from fedmeta.data.base import TaskBatch
from fedmeta.data.federated import FederatedData, make_federated
from fedmeta.data.sinusoid import Sinusoid, sample_regions
from fedmeta.errors import BadInput, ConfigError, FedmetaError
from fedmeta.federated.aggregation import Aggregation
from fedmeta.federated.attacks import ATTACKS
from fedmeta.federated.client import LocalMeta, LocalSGD, local_update
from fedmeta.federated.compression import make_compression
from fedmeta.federated.encrypted import HEStats
from fedmeta.federated.membership import membership_audit
from fedmeta.federated.perfedavg import PerFedAvg
from fedmeta.federated.private_client import PrivateLocal
from fedmeta.federated.record import RunRecord
from fedmeta.federated.registry import build
from fedmeta.federated.strategies import STRATEGIES
from fedmeta.federated.validation import RejectedUpdate, check_update
from fedmeta.federated.wire import encode, raw
from fedmeta.ledger.commitments import RejectedUpdate as SignatureRejected
from fedmeta.ledger.commitments import SignedUpdate, UpdateVerifier, sign_update
from fedmeta.ledger.keys import load_private_key
from fedmeta.meta import ALGORITHMS, MAML, MetaLearner, Params
from fedmeta.models import build_model, parameters_of
from fedmeta.privacy.accountant import Accountant, max_steps_for
from fedmeta.privacy.noise import rng_for
from fedmeta.progress import progress_bar
from fedmeta.rundir import RunDir, file_sha256
from fedmeta.threads import use_threads

log = logging.getLogger("fedmeta.federated")


@dataclass
class Collected:
    """What reached the server in one round, and what happened to the others."""

    messages: dict[int, bytes]
    weights: dict[int, float]
    sampled: list[int]
    dropped: dict[int, str] = field(default_factory=dict)
    attempt: int = 0
    signed: dict[int, SignedUpdate | None] = field(default_factory=dict)
    reports: dict[int, float] = field(default_factory=dict)


class Simulation:
    def __init__(self, cfg: Config):
        if cfg.federated is None:
            raise ValueError("Simulation needs a [federated] section")
        self.cfg, fed = cfg, cfg.federated
        self.data: FederatedData = make_federated(cfg, torch.Generator().manual_seed(cfg.run.seed))
        torch.manual_seed(cfg.run.seed)
        self.model = build_model(
            cfg.model_name, self.data.x_shape, self.data.n_outputs, hidden=cfg.model.hidden, filters=cfg.model.filters
        )
        has_conv = any(isinstance(m, torch.nn.Conv2d) for m in self.model.modules())
        self.batching = fed.clients.batching if fed.clients.batching != "auto" else ("loop" if has_conv else "vmap")
        kind = self.data.kind
        if fed.clients.procedure == "fedmeta":
            self.learner: MetaLearner = ALGORITHMS[cfg.meta.algorithm](
                self.model, kind, inner_steps=cfg.meta.inner_steps, inner_lr=cfg.meta.inner_lr, batching=cfg.meta.batching,
                compile_query=cfg.meta.compile_query,
            )
            self.procedure: Any = LocalMeta(self.learner, fed.clients.lr)
        else:
            self.learner = MAML(self.model, kind, inner_steps=cfg.meta.inner_steps, inner_lr=cfg.meta.inner_lr, batching=cfg.meta.batching)
            if fed.clients.procedure == "perfedavg":
                self.procedure = PerFedAvg(self.model, kind, cfg.meta.inner_lr, fed.clients.lr, fed.clients.perfedavg_variant)
            else:
                mu = fed.clients.mu if fed.clients.procedure == "fedprox" else 0.0
                self.procedure = LocalSGD(self.model, kind, fed.clients.lr, mu)
        self.private: PrivateLocal | None = None
        if cfg.privacy.dp == "example":  # DP-SGD inside each client, looped (samples vary in size)
            dp = cfg.privacy
            self.private = PrivateLocal(
                self.model, kind, fed.clients.lr, sample_rate=dp.example_sample_rate, clip_norm=dp.clip_norm,
                noise_multiplier=dp.noise_multiplier, mu=fed.clients.mu if fed.clients.procedure == "fedprox" else 0.0,
                learner=self.learner if fed.clients.procedure == "fedmeta" else None)
        self.params: Params = self.learner.init(parameters_of(self.model))
        self.strategy = self._strategy()
        self.server_state = self.strategy.init(self.params)
        self.codec = make_compression(fed.clients.compression, fed.clients.topk_fraction)
        self.codec_state: dict[int, Any] = {}
        self.round = 0
        # a secure sum of one update would reveal it (and SecAgg's threshold needs two)
        secure = cfg.privacy.secure_aggregation != "off"
        self.min_usable = max(fed.min_clients, 2) if secure else fed.min_clients
        self.per_round = cfg.clients_per_round_count
        self.accountant = Accountant(cfg.privacy.accountant)
        self.aggregation = Aggregation(cfg, self.sample_rate * len(self.data.train))
        self.attack, self.malicious = self._attackers()
        self.affordable_rounds = self._affordable_rounds()

    def _attackers(self) -> tuple[Any, set[int]]:
        """The simulated attack and the clients running it: a fixed, seeded set of
        ⌊federated.attack.fraction · N⌋ training clients (empty without an attack)."""
        fed = self.cfg.federated
        if fed.attack.name == "none":
            return None, set()
        count = int(fed.attack.fraction * len(self.data.train))
        order = torch.randperm(len(self.data.train), generator=self.generator(0, 0, stream=3))
        return build(ATTACKS, fed.attack.name, fed.attack), set(order[:count].tolist())

    def _affordable_rounds(self) -> int | None:
        """Rounds the target ε allows (None: no target); a target below one round's ε is a
        config error, before anything runs."""
        dp, event = self.cfg.privacy, self.round_event()
        if dp.target_epsilon is None or event is None:
            return None
        try:
            steps = max_steps_for(target_epsilon=dp.target_epsilon, delta=dp.delta, noise_multiplier=event["noise_multiplier"],
                                  sample_rate=event["sample_rate"], accountant=dp.accountant)
            if steps < event["steps"]:
                raise BadInput("privacy.target_epsilon", dp.target_epsilon,
                               f"room for {steps} of the {event['steps']} DP-SGD steps of one round")
            return steps // event["steps"]
        except BadInput as err:
            raise ConfigError("privacy.target_epsilon", dp.target_epsilon,
                              f"{err.accepted}: no round fits; raise privacy.noise_multiplier or lower "
                              "federated.clients_per_round") from None

    def _strategy(self):
        server = self.cfg.federated.server
        return build(STRATEGIES, server.strategy, server)

    # -- randomness ---------------------------------------------------------------------
    def generator(self, round_: int, attempt: int = 0, stream: int = 0) -> torch.Generator:
        seq = np.random.SeedSequence([self.cfg.run.seed, round_, attempt, stream])
        return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))

    # -- clients ------------------------------------------------------------------------
    @property
    def sample_rate(self) -> float:
        return min(1.0, self.per_round / len(self.data.train))

    def sample_clients(self, gen: torch.Generator) -> list[int]:
        """A fixed-size sample, or under client-level DP Poisson sampling at rate q (what the
        accountant assumes)."""
        if self.cfg.privacy.dp in ("central", "local"):
            picked = torch.rand(len(self.data.train), generator=gen) < self.sample_rate
            return picked.nonzero().squeeze(1).tolist()
        order = torch.randperm(len(self.data.train), generator=gen)
        return sorted(order[: self.per_round].tolist())

    def client_episodes(self, cid: int, gen: torch.Generator) -> tuple[TaskBatch, int]:
        fed = self.cfg.federated
        lo = fed.clients.local_steps_min or fed.clients.local_steps
        n_steps = int(torch.randint(lo, fed.clients.local_steps + 1, (1,), generator=gen))
        b = self.data.train[cid].sample(fed.clients.local_steps * fed.clients.tasks_per_step, gen)
        shape = (fed.clients.local_steps, fed.clients.tasks_per_step)
        return TaskBatch(*(t.reshape(*shape, *t.shape[1:]) for t in (b.xs, b.ys, b.xq, b.yq))), n_steps

    def all_episodes(self, clients: list[int], gen: torch.Generator) -> dict[int, tuple[TaskBatch, int]]:
        """Every client's episodes and local step count; sinusoid regions are drawn in one go
        (measured: per-client sampling was a third of a 1000-client round)."""
        tasks = [getattr(self.data.train[c], "tasks", None) for c in clients]
        if not clients or not all(type(t) is Sinusoid and t.k_shot == tasks[0].k_shot and t.k_query == tasks[0].k_query
                                  and t.x_range == tasks[0].x_range for t in tasks):
            return {cid: self.client_episodes(cid, gen) for cid in clients}
        fed = self.cfg.federated
        lo = fed.clients.local_steps_min or fed.clients.local_steps
        steps = torch.randint(lo, fed.clients.local_steps + 1, (len(clients),), generator=gen).tolist()
        b = sample_regions(tasks, fed.clients.local_steps * fed.clients.tasks_per_step, gen)
        shape = (len(clients), fed.clients.local_steps, fed.clients.tasks_per_step)
        b = TaskBatch(*(t.reshape(*shape, *t.shape[2:]) for t in (b.xs, b.ys, b.xq, b.yq)))
        return {cid: (TaskBatch(b.xs[i], b.ys[i], b.xq[i], b.yq[i]), steps[i]) for i, cid in enumerate(clients)}

    def local_deltas(self, clients: list[int], gen: torch.Generator, round_: int) -> dict[int, Params | Exception]:
        """Each client's Δ (or the exception it raised): vmapped in chunks, or looped."""
        if self.private is not None:
            return self._private(clients, gen, round_)
        work = self.all_episodes(clients, gen)
        out: dict[int, Params | Exception] = {}
        if self.batching == "vmap":
            chunk = self.cfg.federated.clients.chunk
            for i in range(0, len(clients), chunk):
                ids = clients[i : i + chunk]
                try:
                    out.update(self._vmapped(ids, work))
                except Exception:  # one bad client must not sink the others: retry one by one
                    out.update(self._looped(ids, work))
        else:
            out.update(self._looped(clients, work))
        return out

    def _vmapped(self, ids: list[int], work: dict) -> dict[int, Params]:
        eps = TaskBatch(*(torch.stack([getattr(work[c][0], f) for c in ids]) for f in ("xs", "ys", "xq", "yq")))
        steps = torch.tensor([work[c][1] for c in ids])

        def one(xs, ys, xq, yq, n):  # a client's Δ from its episodes (steps, tasks, ...)
            return local_update(self.procedure, self.params, TaskBatch(xs, ys, xq, yq), n)

        deltas = vmap(one)(eps.xs, eps.ys, eps.xq, eps.yq, steps)  # each (clients, *shape)
        return {c: {k: v[i].detach() for k, v in deltas.items()} for i, c in enumerate(ids)}

    def _private(self, ids: list[int], gen: torch.Generator, round_: int) -> dict[int, Params | Exception]:
        """Example-level DP-SGD clients: each samples its own examples (Poisson, rate q)."""
        fed = self.cfg.federated
        lo = fed.clients.local_steps_min or fed.clients.local_steps
        steps = torch.randint(lo, fed.clients.local_steps + 1, (len(ids),), generator=gen).tolist()
        out: dict[int, Params | Exception] = {}
        for c, n in zip(ids, steps, strict=True):
            rng = None if self.cfg.privacy.noise_seed is None else self.noise_rng(round_, c + 1)
            try:
                out[c] = self.private.run(self.params, self.data.train[c], n, rng)
            except Exception as err:  # a failing client is dropped from the round
                out[c] = err
        return out

    def _looped(self, ids: list[int], work: dict) -> dict[int, Params | Exception]:
        out: dict[int, Params | Exception] = {}
        for c in ids:
            try:
                d = local_update(self.procedure, self.params, work[c][0], torch.tensor(work[c][1]))
                out[c] = {k: v.detach() for k, v in d.items()}
            except Exception as err:  # a failing client is dropped from the round
                out[c] = err
        return out

    def noise_rng(self, *counters: int):
        return rng_for(self.cfg.privacy.noise_seed, *counters)

    def encode_update(self, cid: int, delta: Params, gen: torch.Generator) -> bytes:
        state = self.codec_state.get(cid)
        if state is None:
            state = self.codec.init(self.params)
        payload, self.codec_state[cid] = self.codec.encode(delta, state, gen)
        return encode(payload)

    def client_message(self, cid: int, round_: int, delta: Params, gen: torch.Generator) -> tuple[bytes, float]:
        """A client's client-side stages on its Δ: DP (clip, local noise share) then wire
        encoding; also its adaptive-clipping report."""
        private, report = self.aggregation.privatize(delta, self.noise_rng(round_, cid + 1))
        return self.encode_update(cid, private, gen), report

    def collect(self, round_: int, attempt: int = 0) -> Collected:
        """Sample clients, simulate their fates, run local procedures, encode updates."""
        fed = self.cfg.federated
        gen = self.generator(round_, attempt)
        sampled = self.sample_clients(gen)
        fate = torch.rand(len(sampled), generator=gen)
        dropped: dict[int, str] = {}
        for cid, u in zip(sampled, fate.tolist()):
            if u < fed.clients.dropout_rate:
                dropped[cid] = "dropped out"
            elif u < fed.clients.dropout_rate + fed.clients.straggler_rate:
                dropped[cid] = "straggler: missed the round deadline"
        active = [c for c in sampled if c not in dropped]
        messages: dict[int, bytes] = {}
        reports: dict[int, float] = {}  # adaptive clipping's [‖Δ‖ ≤ C]
        deltas = self.local_deltas(active, gen, round_)
        honest = [d for c, d in deltas.items() if c not in self.malicious and not isinstance(d, Exception)]
        for cid, result in deltas.items():
            if isinstance(result, Exception):
                dropped[cid] = f"failed: {type(result).__name__}: {result}"
                log.warning("round %d: client %d failed: %s", round_, cid, result)
            elif cid in self.malicious:  # sends what the attack crafts, skipping the DP stage
                messages[cid] = self.encode_update(cid, self.attack(result, honest, gen), gen)
            else:
                messages[cid], reports[cid] = self.client_message(cid, round_, result, gen)
        weights = {c: float(getattr(self.data.train[c], "n_examples", 1)) for c in messages}
        signed = {c: self.sign(c, round_, m, attempt) for c, m in messages.items()} if self.signing else {}
        return Collected(messages, weights, sampled, dropped, attempt, signed, reports)

    # -- signed updates (Ed25519 over the SHA-256 of the exact bytes sent) ----------------
    signing: UpdateVerifier | None = None
    holds_client_keys = True  # simulated clients sign with `ledger.client_keys`; remote ones with their own

    def enable_signing(self, run_id: str, keys_dir: str | None, registered: dict[str, str]) -> None:
        """Clients sign with `<keys_dir>/<client id>.pem`; the server accepts only updates
        signed by the registered key of the client that sent them, once, in the current round
        and attempt. A server whose clients are remote holds no keys (`keys_dir=None`)."""
        self.run_id, self.signing = run_id, UpdateVerifier(registered, run_id)
        folder = None if keys_dir is None else Path(keys_dir)
        self.client_keys = {} if folder is None else {p.stem: load_private_key(p) for p in folder.glob("*.pem")}

    def check_signature(self, cid: int, data: bytes, signed: SignedUpdate | None,
                        attempt: int = 0) -> dict[str, Any] | None:
        """None if the update may proceed, else the refusal as the ledger records it. `cid` is
        the sender as the transport knows it (in-process: the client whose slot carries the
        message; deployed: the client of the node that replied); the update must be signed
        by that client for this round's `attempt`."""
        if self.signing is None:
            return None
        r = self.round + 1
        if signed is None:
            return {"client_id": str(cid), "round": r, "reason": "unknown_key", "detail": f"client {cid} sent an unsigned update"}
        try:
            self.signing.check(signed, data, r, attempt, sender=str(cid))
        except SignatureRejected as err:
            return err.record()
        return None

    def sign(self, cid: int, round_: int, message: bytes, attempt: int = 0) -> SignedUpdate | None:
        key = self.client_keys.get(str(cid))
        return None if key is None else sign_update(key, self.run_id, round_, str(cid), message, attempt)

    # -- server -------------------------------------------------------------------------
    def aggregate(self, collected: Collected) -> tuple[Params, dict[int, str]]:
        """Check every update, average the valid ones by weight, apply the strategy."""
        accepted, rejected = {}, {}
        self.refused: list[dict[str, Any]] = []  # signature rejections, for the ledger
        for cid, data in collected.messages.items():
            refusal = self.check_signature(cid, data, collected.signed.get(cid), collected.attempt)
            if refusal is not None:
                rejected[cid] = f"{refusal['reason']}: {refusal['detail']}"
                self.refused.append(refusal)
                log.warning("round %d: %s", self.round + 1, refusal["detail"])
                continue
            try:
                accepted[cid] = check_update(str(cid), data, self.params)
            except RejectedUpdate as err:
                rejected[cid] = err.reason
                log.warning("round %d: %s", self.round + 1, err)
        if len(accepted) < self.min_usable:
            raise NotEnoughClients(len(accepted), len(collected.sampled))
        ids = sorted(accepted)
        delta = self.aggregation([accepted[c] for c in ids], [collected.weights[c] for c in ids],
                                 [collected.reports.get(c, 0.0) for c in ids], self.noise_rng(self.round + 1, 0))
        delta = {k: v.to(self.params[k].dtype) for k, v in delta.items()}
        new, self.server_state = self.strategy.apply(self.params, delta, self.server_state)
        return new, rejected

    def run_round(self) -> dict[str, Any]:
        r = self.round + 1
        fed = self.cfg.federated
        clip = {"clip_norm": self.aggregation.clip_norm} if self.cfg.privacy.dp != "off" else {}
        for attempt in range(fed.max_retries + 1):
            collected = self.collect(r, attempt)
            try:
                new, rejected = self.aggregate(collected)
                break
            except NotEnoughClients as err:
                log.warning("round %d attempt %d: %s", r, attempt, err)
                short = err
        else:
            raise FedmetaError(
                f"round {r}: only {short.usable} of {short.sampled} sampled clients returned usable updates "
                f"after {fed.max_retries + 1} attempts; federated.min_clients = {fed.min_clients}"
                + (" (secure aggregation needs 2)" if self.min_usable > fed.min_clients else "")
            )
        self.params, self.round = new, r
        if (event := self.round_event()) is not None:
            self.accountant.step(**event)
        self.last_commitments = {str(c): hashlib.sha256(m).hexdigest() for c, m in collected.messages.items() if c not in rejected}
        down = len(encode({k: raw(v) for k, v in self.params.items()}))
        return {
            "round": r,
            "clients": len(collected.messages) - len(rejected),
            "sampled": len(collected.sampled),
            "dropped": len(collected.dropped),
            "rejected": [{"client": c, "reason": why} for c, why in rejected.items()],
            "attempts": collected.attempt + 1,
            **({"malicious": len(self.malicious.intersection(collected.messages))} if self.malicious else {}),
            "bytes_up": sum(len(m) for m in collected.messages.values()),
            "bytes_down": down * len(collected.sampled),
            **self.privacy_spent(),
            **clip,
            **self.secagg_costs(),
        }

    def secagg_costs(self) -> dict[str, Any]:
        """Bytes and seconds of the round's secure aggregation or CKKS sum, when it ran."""
        stats = self.aggregation.stats
        if stats is None or self.cfg.privacy.secure_aggregation == "off":
            return {}
        if isinstance(stats, HEStats):
            return {
                "he_bytes_up": sum(stats.client_bytes),
                "he_client_seconds": round(stats.client_seconds_per_client(), 4),
                "he_server_seconds": round(stats.server_seconds, 4),
                "he_decrypt_seconds": round(stats.decrypt_seconds, 4),
                "he_max_abs_error": stats.max_abs_error,
            }
        return {
            "secagg_bytes_up": sum(c.total_bytes_sent for c in stats.clients.values()),
            "secagg_client_seconds": round(stats.client_seconds_per_client(), 4),
            "secagg_server_seconds": round(stats.server.total_seconds, 4),
            "secagg_included": len(stats.included),
        }

    def round_event(self) -> dict[str, Any] | None:
        """What one round costs, as `Accountant.step` keywords (None: no noise, nothing to
        count). Client level: one Poisson-sampled Gaussian at the client rate; example level:
        every client's `local_steps` DP-SGD steps (`PrivateLocal.round_steps`)."""
        dp = self.cfg.privacy
        if dp.dp == "off" or dp.noise_multiplier == 0:
            return None
        if self.private is not None:
            return self.private.round_steps(self.cfg.federated.clients.local_steps)
        return {"noise_multiplier": dp.noise_multiplier, "sample_rate": self.sample_rate, "steps": 1}

    def privacy_spent(self) -> dict[str, Any]:
        dp = self.cfg.privacy
        if dp.dp == "off":
            return {}
        unit = {"dp_unit": "example" if dp.dp == "example" else "client"}
        if dp.noise_multiplier == 0:  # clipping only: no finite ε
            return {"epsilon": None, "delta": dp.delta, "accountant": dp.accountant, **unit}
        eps = self.accountant.epsilon(dp.delta) if self.accountant.history else 0.0
        return {"epsilon": eps, "delta": dp.delta, "accountant": dp.accountant, **unit}

    def budget_exhausted(self) -> str | None:
        """Why the next round must not run (it would spend more than the target ε), or None."""
        dp, event = self.cfg.privacy, self.round_event()
        if dp.target_epsilon is None or event is None:
            return None
        if self.accountant.would_exceed(target_epsilon=dp.target_epsilon, delta=dp.delta, **event):
            spent = self.privacy_spent()["epsilon"]
            return (f"privacy budget: round {self.round + 1} would exceed target ε = {dp.target_epsilon} at "
                    f"δ = {dp.delta} (σ = {event['noise_multiplier']:.4g}, q = {event['sample_rate']:.4g}, "
                    f"{event['steps']} step(s) per round); spent ε = {spent:.4g}")
        return None

    # -- evaluation -----------------------------------------------------------------------
    def personalization(self, split: str = "test", max_clients: int = 200) -> dict[str, Any]:
        """Loss/accuracy of each evaluation client's query set before and after
        `meta.eval_inner_steps` adaptation steps on its support set, from the global model."""
        clients = self.data.held_out if split == "test" else self.data.train[:max_clients]
        gen = self.generator(0, 0, stream=1 if split == "test" else 2)  # the same episodes every time
        eps = [c.sample(1, gen) for c in clients]
        batch = TaskBatch(*(torch.cat([getattr(e, f) for e in eps]) for f in ("xs", "ys", "xq", "yq")))
        per = self.learner.evaluate(self.params, batch, self.cfg.meta.eval_inner_steps, per_task=True)
        row: dict[str, Any] = {"split": split, "eval_clients": len(clients)}
        for k, v in per.items():
            row[k] = float(v.mean())
        if "acc_after" in per:
            row["acc_before_p10"] = float(per["acc_before"].quantile(0.1))
            row["acc_after_p10"] = float(per["acc_after"].quantile(0.1))
        row["loss_after_p90"] = float(per["loss_after"].quantile(0.9))
        row["per_client"] = {k: [round(float(x), 6) for x in v] for k, v in per.items()}
        return row

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"round": self.round, "params": self.params, "server_state": self.server_state,
                "codec_state": self.codec_state, "accountant": self.accountant.state_dict(),
                "aggregation": self.aggregation.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round = state["round"]
        self.params = state["params"]
        self.server_state = state["server_state"]
        self.codec_state = state["codec_state"]
        self.accountant = Accountant.from_state_dict(state["accountant"])
        self.aggregation.load_state_dict(state["aggregation"])


class NotEnoughClients(Exception):
    def __init__(self, usable: int, sampled: int):
        self.usable, self.sampled = usable, sampled
        super().__init__(f"{usable} usable updates of {sampled} sampled clients")


def run_federated(cfg: Config, run: RunDir, *, resume: bool = False, show_progress: bool = True,
                  sim: Simulation | None = None) -> dict:
    """Drive a federated run to the end, logging, checkpointing and summarising. `sim` is
    the runtime (default: an in-process `Simulation(cfg)`); a deployment passes one whose
    `collect` reaches real clients, which sign with their own keys.

    Each step (the round-0 evaluation, every round, the end) is committed to the
    checkpoint with what it publishes, then published (`fedmeta.rundir`): metrics rows,
    the ledger's entries, and at the end `model.pt`, `personalization.json` and
    `summary.json`. A resumed run publishes its last committed step again, then goes on."""
    sim = Simulation(cfg) if sim is None else sim
    fed = cfg.federated
    use_threads(cfg, sim.batching)
    record = RunRecord(cfg, run.path) if cfg.ledger.enabled else None
    committed = run.load_checkpoint() if resume else None
    if committed is None:
        progress: dict[str, Any] = {"run_id": uuid.uuid4().hex, "elapsed": 0.0, "evaluated": None,
                                    "last": {}, "per_client": {}, "stopped": None}
    else:
        sim.load_state_dict(committed["state"]["simulation"])
        progress = committed["state"]["progress"]
    t0 = time.perf_counter() - progress["elapsed"]

    def publish(step: dict[str, Any]) -> dict[str, Any] | None:
        if record is not None:
            if "start" in step:
                record.start(progress["run_id"], sim.params)
            if "round" in step:
                record.round(progress["run_id"], sim.params, step["round"])
        if "final" not in step:
            return None
        run.save_model(sim.params)
        run.write_json("personalization.json", step["final"]["per_client"])
        summary = dict(step["final"]["summary"])
        if record is not None:
            files = {n: file_sha256(run.path / n) for n in ("model.pt", "personalization.json")}
            summary["ledger"] = record.end(progress["run_id"], sim.params,
                                           {k: summary[k] for k in ("rounds", "final")}, files)
        run.write_json("summary.json", summary)
        return summary

    def commit(step: dict[str, Any]) -> dict[str, Any] | None:
        progress["elapsed"] = time.perf_counter() - t0
        run.commit({"simulation": sim.state_dict(), "progress": progress}, step)
        return publish(step)

    if committed is not None:
        done = publish(committed["publish"])
        if done is not None:
            return done
    keys = cfg.ledger.client_keys if sim.holds_client_keys else None
    if record is not None and (keys or (not sim.holds_client_keys and cfg.ledger.participants)):
        sim.enable_signing(progress["run_id"], keys, cfg.ledger.participants)
    if sim.affordable_rounds is not None and sim.affordable_rounds < fed.rounds:
        print(f"privacy budget: target ε = {cfg.privacy.target_epsilon} at δ = {cfg.privacy.delta} allows "
              f"{sim.affordable_rounds} of federated.rounds = {fed.rounds}; the run will stop there", file=sys.stderr)

    def evaluate(extra: dict[str, Any]) -> list[dict[str, Any]]:
        progress["evaluated"] = sim.round
        rows = []
        for split in ("test", "train") if sim.data.held_out else ("train",):
            row = sim.personalization(split)
            clients = row.pop("per_client")
            rows.append({"round": sim.round, **row, **sim.privacy_spent(), **extra})
            if split == "test" or not sim.data.held_out:
                progress["last"], progress["per_client"] = row, clients
        return rows

    with progress_bar(fed.rounds, sim.round, "federated rounds", show_progress) as advance:
        if committed is None:
            commit({"rows": evaluate({"bytes_up": 0, "bytes_down": 0}), "start": True})
        while sim.round < fed.rounds:
            progress["stopped"] = sim.budget_exhausted()
            if progress["stopped"]:
                log.warning(progress["stopped"])
                print(f"stopping early: {progress['stopped']}", file=sys.stderr)
                break
            info = sim.run_round()
            spent = sim.privacy_spent()
            entry = {"round": sim.round, "commitments": sim.last_commitments, "aggregation": fed.server.strategy,
                     "epsilon": spent.get("epsilon"), "delta": spent.get("delta"),
                     "metrics": {k: info[k] for k in ("clients", "sampled", "dropped", "bytes_up", "bytes_down") if k in info},
                     "rejected": info.get("rejected", []), "refused": list(sim.refused)}
            if sim.round % fed.eval_every == 0 or sim.round == fed.rounds:
                rows = evaluate(info)
            else:
                rows = [{**info, "split": "round"}]
            commit({"rows": rows, "round": entry})
            last = progress["last"]
            advance(**{k: last[k] for k in ("loss_after", "acc_after") if k in last})
    # the loop ended off-schedule (budget stop): the final model is evaluated once more
    rows = evaluate({}) if progress["evaluated"] != sim.round else []
    audit = membership_audit(sim.learner, sim.params, sim.data) if cfg.privacy.audit else None
    summary = {
        "mode": "federated",
        "procedure": fed.clients.procedure,
        "algorithm": cfg.meta.algorithm if fed.clients.procedure == "fedmeta" else fed.clients.procedure,
        "strategy": fed.server.strategy,
        "rounds": sim.round,
        "stopped": progress["stopped"],
        **sim.privacy_spent(),
        "seconds": round(time.perf_counter() - t0, 2),
        "final": {k: v for k, v in progress["last"].items() if k not in ("round", "split")},
    }
    if cfg.privacy.dp != "off" or cfg.privacy.secure_aggregation != "off":
        summary["privacy"] = cfg.privacy.model_dump(include={"dp", "clipping", "secure_aggregation"})
    if audit is not None:
        summary["membership_audit"] = audit
    per_round = {r["round"]: r for r in run.metrics() + rows if "bytes_up" in r}  # one row per round counts
    for key in ("bytes_up", "bytes_down"):
        summary[f"{key}_total"] = sum(r[key] for r in per_round.values())
    return commit({"rows": rows, "final": {"summary": summary, "per_client": progress["per_client"]}})
