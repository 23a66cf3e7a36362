"""The in-process transport: every sampled client simulated in this process.

A round continues the server's round stream: each sampled client's fate (it drops out
with probability `dropout_rate`, straggles past the deadline with `straggler_rate`), the
survivors' local procedures (`training.py`, vmapped or looped), then each client's
pipeline (`client_steps.py`) in client order. A fixed, seeded set of ⌊federated.attack.fraction·N⌋
training clients runs a simulated attack instead of the DP step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fedmeta.config import Config
from fedmeta.federated.attacks import ATTACKS
from fedmeta.federated.client_steps import Context, Craft, Pipeline, Upload
from fedmeta.federated.registry import build
from fedmeta.federated.sampling import ATTACKERS, CLIENT, generator, generators
from fedmeta.federated.training import Training
from fedmeta.federated.transport import Broadcast, Replies, Reply
from fedmeta.params import PerClient, Stacked
from fedmeta.privacy.noise import rng_for

log = logging.getLogger("fedmeta.federated")


def attackers(cfg: Config, n_clients: int) -> tuple[Any, frozenset[int]]:
    """The simulated attack and the clients running it (None and nobody without an attack)."""
    attack = cfg.federated.attack
    if attack.name == "none":
        return None, frozenset()
    count = int(attack.fraction * n_clients)
    order = torch.randperm(n_clients, generator=generator(cfg.run.seed, 0, 0, ATTACKERS))
    return build(ATTACKS, attack.name, attack), frozenset(order[:count].tolist())


def key_lookup(folder: str | None) -> Callable[[int], Path | None]:
    """Client c's signing key, `<folder>/<c>.pem` (`ledger.client_keys`), or None."""

    def key_for(cid: int) -> Path | None:
        path = None if folder is None else Path(folder) / f"{cid}.pem"
        return path if path is not None and path.is_file() else None

    return key_for


def failures(deltas: PerClient) -> set[int]:
    """The clients whose local procedure raised (a stacked block holds none)."""
    return {c for ids, results in deltas.blocks if not isinstance(results, Stacked)
            for c, d in zip(ids, results, strict=True) if isinstance(d, Exception)}


class InProcess:
    def __init__(self, cfg: Config, training: Training, pipeline: Pipeline):
        self.training, self.pipeline = training, pipeline
        fed = cfg.federated
        self.dropout_rate, self.straggler_rate = fed.clients.dropout_rate, fed.clients.straggler_rate
        self.seed, self.noise_seed = cfg.run.seed, cfg.privacy.noise_seed
        attack, self.malicious = attackers(cfg, len(training.clients))
        self.attacker = pipeline.without("privatize").before("compress", "craft", Craft(attack)) if attack else None
        self.signs = bool(cfg.ledger.client_keys)
        self.states: dict[int, dict[str, Any]] = {}  # each client's pipeline state, checkpointed
        self.client_streams = True  # False: a run begun before clients drew from their own streams

    def exchange(self, round_: int, attempt: int, sampled: list[int], b: Broadcast) -> Replies:
        gen, out = b.generator, Replies(sampled, attempt)
        for cid, u in zip(sampled, torch.rand(len(sampled), generator=gen).tolist(), strict=True):
            if u < self.dropout_rate:
                out.dropped[cid] = "dropped out"
            elif u < self.dropout_rate + self.straggler_rate:
                out.dropped[cid] = "straggler: missed the round deadline"
        active = [c for c in sampled if c not in out.dropped]
        seeded = self.noise_seed is not None
        streams = dict(zip(active, generators(self.seed, round_, attempt, [CLIENT + c for c in active]), strict=True))
        stream = streams.__getitem__ if self.client_streams else None
        deltas = self.training.deltas(active, b.params, gen, lambda c: rng_for(self.noise_seed, round_, c + 1) if seeded else None,
                                      stream)
        failed = failures(deltas)
        honest = [c for c in deltas if c not in self.malicious and c not in failed]
        ctx = Context(b.params, round_, attempt, gen, lambda c: rng_for(self.noise_seed, round_, c + 1),
                      b.clip_norm, b.run_id, deltas.rows(honest))
        for ids, results in deltas.blocks:
            uploads = self._batch(ids, results, ctx)
            for i, cid in enumerate(ids):
                upload = uploads[i] if uploads is not None else self._upload(cid, results[i], ctx, out)
                if upload is not None:
                    weight = float(getattr(self.training.clients[cid], "n_examples", 1))
                    out.replies[cid] = Reply(upload.data, weight, upload.report, upload.signed)
        if self.malicious:
            out.malicious = len(self.malicious.intersection(out.replies))
        return out

    def _batch(self, ids: list[int], results: Sequence[Any], ctx: Context) -> list[Upload] | None:
        """A stacked block's uploads in one pass (`Pipeline.batch`), when no attacker is among them."""
        if not isinstance(results, Stacked) or not self.malicious.isdisjoint(ids):
            return None
        return self.pipeline.batch(ids, results, self.states, ctx)

    def _upload(self, cid: int, result: Any, ctx: Context, out: Replies) -> Upload | None:
        """One client's upload through its pipeline, or None (its failure recorded in `out`)."""
        if isinstance(result, Exception):
            out.dropped[cid] = f"failed: {type(result).__name__}: {result}"
            log.warning("round %d: client %d failed: %s", ctx.round, cid, result)
            return None
        pipeline = self.attacker if cid in self.malicious else self.pipeline
        upload, self.states[cid] = pipeline(Upload(cid, result), self.states.get(cid), ctx)
        return upload
