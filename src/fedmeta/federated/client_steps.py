"""A client's pipeline after its local procedure: privatize → compress → sign (secure
aggregation masks last, on the row the server's aggregation asks for).

Each step is a small `(init, apply)` pair, as optax's `chain` and Flower's client mods
are: `init(params) -> state` makes the step's per-client state (a top-k residual; None
for stateless steps) and `apply(upload, state, ctx) -> (upload, state)` transforms what
the client will send. The states are part of the checkpoint in-process and of each
supernode's context when deployed, and the same steps run in both places.

- `Privatize`: client-level DP's client half (clip, local noise share, adaptive
  clipping's report), `dp_fedavg.py`.
- `Craft`: a simulated malicious client replaces its update with what an attack crafts
  (`attacks.py`), skipping the DP step; in-process only.
- `Compress`: encodes the update to the bytes sent (`compression.py`, `wire.py`).
- `Sign`: Ed25519 over the SHA-256 of those bytes for (run, round, attempt)
  (`fedmeta.ledger.commitments`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from fedmeta.federated.dp_fedavg import ClientLevelDP
from fedmeta.federated.wire import encode
from fedmeta.ledger.commitments import SignedUpdate, sign_update
from fedmeta.ledger.keys import load_private_key
from fedmeta.params import Params, Stacked


@dataclass(frozen=True)
class Upload:
    """What travels down one client's pipeline: its update until encoded, then the bytes."""

    client: int
    delta: Params
    data: bytes = b""
    report: float = 0.0  # adaptive clipping's [‖Δ‖ ≤ C] (noisy in the local placement)
    signed: SignedUpdate | None = None


@dataclass
class Context:
    """What a step may read of the round: the global parameters, the round's header, and
    its sources of randomness."""

    params: Params
    round: int
    attempt: int
    generator: torch.Generator  # the round's stream (in-process) or the client's own
    noise: Callable[[int], np.random.Generator]  # client c's DP noise source
    clip_norm: float = 0.0  # client-level DP's C this round
    run_id: str = ""  # the run whose ledger the signature is for ("" = nobody signs)
    peers: Sequence[Params] = ()  # the round's honest updates (only a simulated attack reads them)


class ClientStep(Protocol):
    def init(self, params: Params) -> Any: ...

    def apply(self, upload: Upload, state: Any, ctx: Context) -> tuple[Upload, Any]: ...


class Stateless:
    def init(self, params: Params) -> None:
        return None


@dataclass
class Privatize(Stateless):
    dp: ClientLevelDP

    def apply(self, upload: Upload, state: Any, ctx: Context) -> tuple[Upload, Any]:
        delta, report = self.dp.privatize(upload.delta, ctx.clip_norm, ctx.noise(upload.client))
        return replace(upload, delta=delta, report=report), state


@dataclass
class Craft(Stateless):
    attack: Any

    def apply(self, upload: Upload, state: Any, ctx: Context) -> tuple[Upload, Any]:
        return replace(upload, delta=self.attack(upload.delta, list(ctx.peers), ctx.generator)), state


@dataclass
class Compress:
    codec: Any

    def init(self, params: Params) -> Any:
        return self.codec.init(params)

    def apply(self, upload: Upload, state: Any, ctx: Context) -> tuple[Upload, Any]:
        payload, state = self.codec.encode(upload.delta, state, ctx.generator)
        return replace(upload, data=encode(payload)), state

    def encode_rows(self, deltas: Stacked) -> list[bytes] | None:
        """Every stacked update's bytes in one pass, where the codec can (stateless, no
        randomness: no compression); else None."""
        rows = getattr(self.codec, "encode_rows", None)
        return None if rows is None else rows(deltas.tensors)


@dataclass
class Sign(Stateless):
    """Signs with `key_for(client)` (a PEM path, or None: this client holds no key)."""

    key_for: Callable[[int], Path | None]
    _keys: dict[Path, Any] = field(default_factory=dict)

    def apply(self, upload: Upload, state: Any, ctx: Context) -> tuple[Upload, Any]:
        path = self.key_for(upload.client) if ctx.run_id else None
        if path is None:
            return upload, state
        key = self._keys.get(path) or self._keys.setdefault(path, load_private_key(path))
        signed = sign_update(key, ctx.run_id, ctx.round, str(upload.client), upload.data, ctx.attempt)
        return replace(upload, signed=signed), state


@dataclass
class Pipeline:
    """Named steps applied in order; `states[name]` is each step's state for one client."""

    steps: dict[str, ClientStep]

    def init(self, params: Params) -> dict[str, Any]:
        return {name: step.init(params) for name, step in self.steps.items()}

    def __call__(self, upload: Upload, states: dict[str, Any] | None, ctx: Context) -> tuple[Upload, dict[str, Any]]:
        states = self._states(states, ctx)
        for name, step in self.steps.items():
            upload, states[name] = step.apply(upload, states[name], ctx)
        return upload, states

    def batch(self, clients: list[int], deltas: Stacked, states: dict[int, dict[str, Any]],
              ctx: Context) -> list[Upload] | None:
        """The clients' uploads as `self` makes each, the first step encoding all the stacked
        updates in one pass (the uploads carry the bytes only), and `states[c]` updated; None
        unless that first step can (`Compress.encode_rows`)."""
        (_, first), *rest = self.steps.items()
        encoded = first.encode_rows(deltas) if isinstance(first, Compress) else None
        if encoded is None:
            return None
        uploads = []
        for c, data in zip(clients, encoded, strict=True):
            upload, state = Upload(c, {}, data), self._states(states.get(c), ctx)
            for name, step in rest:
                upload, state[name] = step.apply(upload, state[name], ctx)
            states[c] = state
            uploads.append(upload)
        return uploads

    def _states(self, states: dict[str, Any] | None, ctx: Context) -> dict[str, Any]:
        """A copy of one client's step states, each missing one made by its step's `init`."""
        states = dict(states) if states is not None else self.init(ctx.params)
        for name, step in self.steps.items():
            if name not in states:
                states[name] = step.init(ctx.params)
        return states

    def without(self, name: str) -> Pipeline:
        return Pipeline({k: v for k, v in self.steps.items() if k != name})

    def before(self, name: str, step_name: str, step: ClientStep) -> Pipeline:
        """This pipeline with `step` inserted before the step called `name`."""
        out: dict[str, ClientStep] = {}
        for k, v in self.steps.items():
            if k == name:
                out[step_name] = step
            out[k] = v
        return Pipeline(out)
