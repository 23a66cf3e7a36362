"""Update compression on the client, as (init, encode) pairs whose state checkpoints.

- `TopK`: keep the k largest-magnitude coordinates of the whole update, with error
  feedback: what was not sent is added to the next update (Stich, Cordonnier & Jaggi
  2018, "Sparsified SGD with Memory"; Aji & Heafield 2017).
- `StochasticInt8`: per-tensor 8-bit stochastic quantization onto 256 levels between
  the tensor's min and max, unbiased (Suresh et al. 2017, "Distributed Mean Estimation
  with Limited Communication"; Alistarh et al. 2017, QSGD).
- `NoCompression`: float32 values.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedmeta.federated.wire import Encoded, encode_rows, raw
from fedmeta.meta.base import Params


@dataclass(frozen=True)
class NoCompression:
    def init(self, params: Params) -> Any:
        return None

    def encode(self, delta: Params, state: Any, generator: torch.Generator) -> tuple[dict[str, Encoded], Any]:
        return {k: raw(v) for k, v in delta.items()}, state

    def encode_rows(self, stacked: Params) -> list[bytes]:
        """The bytes of each update stacked (clients, *shape), as `encode` then `wire.encode`."""
        return encode_rows(stacked)


@dataclass(frozen=True)
class TopK:
    fraction: float

    def init(self, params: Params) -> Params:
        return {k: torch.zeros_like(v) for k, v in params.items()}

    def encode(self, delta: Params, residual: Params, generator: torch.Generator):
        names = list(delta)
        u = {k: delta[k] + residual[k] for k in names}
        flat = torch.cat([u[k].reshape(-1) for k in names])  # (total,)
        k = max(1, int(round(self.fraction * flat.numel())))
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[flat.abs().topk(k).indices] = True
        out, new_residual, start = {}, {}, 0
        for name in names:
            n = u[name].numel()
            mask = keep[start : start + n]
            idx = mask.nonzero().squeeze(1)
            vals = u[name].reshape(-1)[idx]
            out[name] = Encoded("topk", tuple(u[name].shape), (idx.numpy().astype(np.int32), vals.numpy().astype(np.float32)))
            new_residual[name] = torch.where(mask.reshape(u[name].shape), torch.zeros_like(u[name]), u[name])
            start += n
        return out, new_residual


@dataclass(frozen=True)
class StochasticInt8:
    def init(self, params: Params) -> Any:
        return None

    def encode(self, delta: Params, state: Any, generator: torch.Generator):
        out = {}
        for name, t in delta.items():
            t = t.detach().to(torch.float32)
            low, high = t.min(), t.max()
            step = (high - low) / 255 if high > low else torch.ones(())
            scaled = (t - low) / step  # in [0, 255]
            noise = torch.rand(t.shape, generator=generator)
            codes = torch.floor(scaled + noise).clamp(0, 255).to(torch.uint8)
            params = np.array([float(low), float(step)], np.float32)
            out[name] = Encoded("int8", tuple(t.shape), (codes.numpy().ravel(), params))
        return out, state


def make_compression(name: str, topk_fraction: float = 0.01):
    if name == "topk":
        return TopK(topk_fraction)
    if name == "int8":
        return StochasticInt8()
    return NoCompression()
