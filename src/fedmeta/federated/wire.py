"""The bytes a client sends: a self-describing, canonical encoding of an update.

Layout: magic `FMU1`, a 4-byte big-endian header length, a JSON header listing each tensor
(name, shape, encoding, the dtype and byte length of each part), then the parts' raw
little-endian bytes in header order. Encodings: `raw` (float32 values), `topk` (int32
flat indices + float32 values), `int8` (uint8 codes + float32 [low, step]). Communication
cost is counted from these bytes exactly, and ledger commitments hash them.
"""

from __future__ import annotations

import json
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
    return Encoded("raw", tuple(t.shape), (t.detach().to(torch.float32).numpy().ravel(),))


def encode(tensors: dict[str, Encoded]) -> bytes:
    header, blobs = [], []
    for name in sorted(tensors):
        e = tensors[name]
        parts = [np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<")) for p in e.parts]
        header.append({"name": name, "kind": e.kind, "shape": list(e.shape),
                       "parts": [[p.dtype.str, p.nbytes] for p in parts]})
        blobs += [p.tobytes() for p in parts]
    head = json.dumps(header, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head + b"".join(blobs)


class MalformedUpdate(ValueError):
    """The bytes are not a well-formed update."""


def decode(data: bytes) -> dict[str, Tensor]:
    """Dense tensors from the wire bytes; raises MalformedUpdate on any defect."""
    try:
        if data[:4] != MAGIC:
            raise MalformedUpdate("bad magic")
        (n,) = struct.unpack(">I", data[4:8])
        header = json.loads(data[8 : 8 + n])
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


def _dense(kind: str, shape: tuple[int, ...], parts: list[np.ndarray]) -> Tensor:
    size = int(np.prod(shape, dtype=np.int64))
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
