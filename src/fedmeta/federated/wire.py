"""The bytes a client sends: a self-describing, canonical encoding of an update.

Layout: magic `FMU1`, a 4-byte big-endian header length, a JSON header listing each tensor
(name, shape, encoding, the dtype and byte length of each part), then the parts' raw
little-endian bytes in header order. Encodings: `raw` (float32 values), `topk` (int32
flat indices + float32 values), `int8` (uint8 codes + float32 [low, step]). Communication
cost is counted from these bytes exactly, and ledger commitments hash them.
"""

from __future__ import annotations

import functools
import json
import math
import struct
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

MAGIC = b"FMU1"


@dataclass(frozen=True)
class Encoded:
    """One tensor on the wire: its encoding, shape and the arrays that carry it."""

    kind: str
    shape: tuple[int, ...]
    parts: tuple[np.ndarray, ...]


def raw(t: Tensor) -> Encoded:
    t = t.detach()
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return Encoded("raw", tuple(t.shape), (t.numpy().ravel(),))


def encode(tensors: dict[str, Encoded]) -> bytes:
    names = sorted(tensors)
    parts = [
        [np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<")) for p in tensors[n].parts] for n in names
    ]
    layout = tuple(
        (n, tensors[n].kind, tuple(tensors[n].shape), tuple((p.dtype.str, p.nbytes) for p in ps))
        for n, ps in zip(names, parts, strict=True)
    )
    blobs = [p.tobytes() for ps in parts for p in ps]
    return _header(layout) + b"".join(blobs)


@functools.lru_cache(maxsize=64)
def _header(layout: tuple) -> bytes:
    """Magic, length and JSON header of a layout; every client of a round shares one."""
    items = [{"name": n, "kind": k, "shape": list(shape), "parts": [list(p) for p in parts]} for n, k, shape, parts in layout]
    head = json.dumps(items, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head


class MalformedUpdate(ValueError):
    """The bytes are not a well-formed update."""


def decode(data: bytes) -> dict[str, Tensor]:
    """Dense tensors from the wire bytes; raises MalformedUpdate on any defect."""
    try:
        if data[:4] != MAGIC:
            raise MalformedUpdate("bad magic")
        (n,) = struct.unpack(">I", data[4:8])
        header = _parse_header(bytes(data[8 : 8 + n]))
        offset, out = 8 + n, {}
        for item in header:
            parts = []
            for dtype, nbytes in item["parts"]:
                if offset + nbytes > len(data):
                    raise MalformedUpdate("truncated")
                parts.append(np.frombuffer(data, dtype=np.dtype(dtype), count=nbytes // np.dtype(dtype).itemsize, offset=offset))
                offset += nbytes
            out[item["name"]] = _dense(item["kind"], tuple(item["shape"]), parts)
        if offset != len(data):
            raise MalformedUpdate("trailing bytes")
        return out
    except MalformedUpdate:
        raise
    except Exception as err:  # any parse failure of untrusted bytes
        raise MalformedUpdate(f"{type(err).__name__}: {err}") from None


@functools.lru_cache(maxsize=64)
def _parse_header(head: bytes) -> list:
    return json.loads(head)


def _dense(kind: str, shape: tuple[int, ...], parts: list[np.ndarray]) -> Tensor:
    size = math.prod(shape)
    if kind == "raw":
        flat = parts[0]  # dtype as sent: the server's checks reject anything but float32
    elif kind == "topk":
        idx, val = parts
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise MalformedUpdate("top-k index out of range")
        flat = np.zeros(size, val.dtype)
        flat[idx] = val
    elif kind == "int8":
        codes, (low, step) = parts
        flat = (low + codes.astype(np.float32) * step).astype(np.float32)
    else:
        raise MalformedUpdate(f"unknown encoding {kind!r}")
    if flat.size != size:
        raise MalformedUpdate(f"{flat.size} values for shape {shape}")
    return torch.from_numpy(flat.copy()).reshape(shape)
