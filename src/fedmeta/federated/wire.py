"""The bytes a client sends: a self-describing, canonical encoding of an update.

Layout: magic `FMU1`, a 4-byte big-endian header length, a JSON header listing each tensor
(name, shape, encoding, the dtype and byte length of each part), then the parts' raw
little-endian bytes in header order. Encodings: `raw` (float32 values), `topk` (int32
flat indices + float32 values), `int8` (uint8 codes + float32 [low, step]). Communication
cost is counted from these bytes exactly, and ledger commitments hash them. `decode` told the
expected shapes checks every claimed size before allocating anything proportional to it.
"""

from __future__ import annotations

import functools
import json
import math
import struct
import sys
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

MAGIC = b"FMU1"
LITTLE = sys.byteorder == "little"


class Encoded(NamedTuple):
    """One tensor on the wire: its encoding, shape and the arrays that carry it."""

    kind: str
    shape: tuple[int, ...]
    parts: tuple[np.ndarray, ...]


def raw(t: Tensor) -> Encoded:
    t = t.detach()
    a = (t if t.dtype == torch.float32 else t.to(torch.float32)).numpy()
    return Encoded("raw", a.shape, (a.ravel(),))


def encode(tensors: dict[str, Encoded]) -> bytes:
    names = sorted(tensors)
    parts = [[_little(p) for p in tensors[n].parts] for n in names]
    layout = tuple(
        (n, tensors[n].kind, tuple(tensors[n].shape), tuple((p.dtype.str, p.nbytes) for p in ps))
        for n, ps in zip(names, parts, strict=True)
    )
    blobs = [p.tobytes() for ps in parts for p in ps]
    return _header(layout) + b"".join(blobs)


def encode_rows(stacked: Mapping[str, Tensor]) -> list[bytes]:
    """`encode({name: raw(t[i])})` for every row i of tensors stacked (clients, *shape), in
    one pass: the rows share one header and their values are laid out together."""
    names = sorted(stacked)
    n = len(stacked[names[0]])
    values = [_little(stacked[k].detach().to(torch.float32).reshape(n, -1).numpy()) for k in names]  # (clients, size)
    head = _header(tuple((k, "raw", tuple(stacked[k].shape[1:]), (("<f4", v[0].nbytes),)) for k, v in zip(names, values)))
    return [b"".join([head, *(v[i] for v in values)]) for i in range(n)]


def _little(p: np.ndarray) -> np.ndarray:
    """`p` as contiguous little-endian values (itself when it already is)."""
    if p.dtype.byteorder == ">" or (p.dtype.byteorder == "=" and not LITTLE):
        return np.ascontiguousarray(p, dtype=p.dtype.newbyteorder("<"))
    return np.ascontiguousarray(p)


@functools.lru_cache(maxsize=64)
def _header(layout: tuple) -> bytes:
    """Magic, length and JSON header of a layout; every client of a round shares one."""
    items = [{"name": n, "kind": k, "shape": list(shape), "parts": [list(p) for p in parts]} for n, k, shape, parts in layout]
    head = json.dumps(items, separators=(",", ":")).encode()
    return MAGIC + struct.pack(">I", len(head)) + head


class MalformedUpdate(ValueError):
    """The bytes are not a well-formed update."""


class UnexpectedLayout(MalformedUpdate):
    """Well-formed bytes whose tensor names, shapes or dtypes are not the expected ones."""


class NonFiniteValues(MalformedUpdate):
    """Well-formed bytes of the expected layout carrying a NaN or an infinity."""


# Each encoding's parts: their dtypes and element counts for a tensor of `size` values
# (top-k: k indices and k values, k ≤ size, taken from the header and checked against size).
DTYPES = {"raw": ("<f4",), "topk": ("<i4", "<f4"), "int8": ("|u1", "<f4")}


def decode(data: bytes, expected: Mapping[str, tuple[int, ...]] | None = None) -> dict[str, Tensor]:
    """Dense tensors from the wire bytes; raises MalformedUpdate on any defect.

    `expected` (name -> shape; the server knows its model's) is what untrusted bytes must
    be decoded against: then every claimed name, shape, dtype and count is checked against
    it and against the message's own length before anything is allocated, so a message
    costs memory and time proportional to the model and its own size, whatever it claims.
    Then every value must also be finite. Without it the header's shapes are trusted (raw
    parts may then carry any dtype)."""
    try:
        if len(data) < 8 or data[:4] != MAGIC:
            raise MalformedUpdate("bad magic")
        (n,) = struct.unpack(">I", data[4:8])
        if 8 + n > len(data):
            raise MalformedUpdate(f"truncated: a {n}-byte header in {len(data)} bytes")
        shapes = None if expected is None else tuple(expected.items())
        if shapes is not None and n > (most := _header_bound(shapes)):
            raise MalformedUpdate(f"a {n}-byte header; the expected tensors' takes at most {most}")
        header, body = _plan(bytes(data[8 : 8 + n]), shapes)
        if 8 + n + body != len(data):
            raise MalformedUpdate(
                f"{'truncated' if 8 + n + body > len(data) else 'trailing bytes'}: the header "
                f"describes {body} bytes of values, the message carries {len(data) - 8 - n}"
            )
        values = bytearray(memoryview(data)[8 + n :])  # one copy, which the tensors then share
        arrays = {name: _dense(kind, shape, [np.frombuffer(values, dtype, count, offset) for dtype, count, offset in parts])
                  for name, kind, shape, parts in header}
        if expected is not None and not np.isfinite(np.concatenate([a.ravel() for a in arrays.values()])).all():
            bad = next(name for name, a in arrays.items() if not np.isfinite(a).all())
            raise NonFiniteValues(f"{bad}: non-finite values (NaN or Inf)")
        return {name: torch.from_numpy(a) for name, a in arrays.items()}
    except MalformedUpdate:
        raise
    except Exception as err:  # any parse failure of untrusted bytes
        raise MalformedUpdate(f"{type(err).__name__}: {err}") from None


def decode_rows(data: Sequence[bytes], expected: Mapping[str, tuple[int, ...]]) -> tuple[dict[str, np.ndarray], np.ndarray] | None:
    """Messages of one layout of raw tensors decoded together, as `decode(d, expected)`
    decodes each: name -> (finite messages, *shape) in header order, and which messages
    hold only finite values (each array a view of one buffer of all rows); None unless all
    share one well-formed header of raw tensors and its length (then decode each, for its
    own verdict)."""
    first = data[0] if data else b""
    if len(first) < 8 or first[:4] != MAGIC:
        return None
    n, shapes = struct.unpack(">I", first[4:8])[0], tuple(expected.items())
    prefix = bytes(first[: 8 + n])
    try:
        header, body = _plan(prefix[8:], shapes) if n <= _header_bound(shapes) else (None, 0)
    except Exception:  # a malformed header: each message's decode says why
        return None
    if header is None or any(kind != "raw" for _, kind, _, _ in header):
        return None
    if not all(len(d) == 8 + n + body and d[: 8 + n] == prefix for d in data):
        return None
    values = np.frombuffer(bytearray().join(memoryview(d)[8 + n :] for d in data), "<f4").reshape(len(data), -1)
    finite = np.isfinite(values.sum(axis=1, dtype=np.float64))  # float32 values: a finite row's sum is finite
    if not finite.all():
        values = values[finite]
    arrays = {name: values[:, offset // 4 : offset // 4 + count].reshape(len(values), *shape)
              for name, _, shape, ((_, count, offset),) in header}
    return arrays, finite


@functools.lru_cache(maxsize=64)
def _header_bound(expected: tuple[tuple[str, tuple[int, ...]], ...]) -> int:
    """Generous bound on the JSON header of `expected`'s tensors (any encoding, names
    escaped at 12 bytes a character, 24 bytes a dimension), so that an oversized header is
    refused before it is parsed."""
    return 256 + sum(256 + 12 * len(name) + 24 * len(shape) for name, shape in expected)


@functools.lru_cache(maxsize=64)
def _plan(head: bytes, expected: tuple | None) -> tuple[tuple, int]:
    """The checked layout of a header (`_layout`, then against `expected`) as (name, kind,
    shape, [(dtype, count, offset in the values)]), and the values' byte length; kept for
    the next message with the same header: a round's clients share one, so it is parsed
    and checked once per round."""
    header = _layout(json.loads(head))
    if expected is not None:
        _check_expected(header, dict(expected))
    out, offset = [], 0
    for name, kind, shape, layout in header:
        parts = []
        for dtype, nbytes in layout:
            parts.append((dtype, nbytes // dtype.itemsize, offset))
            offset += nbytes
        out.append((name, kind, shape, tuple(parts)))
    return tuple(out), offset


def _layout(items: Any) -> list[tuple[str, str, tuple[int, ...], list[tuple[np.dtype, int]]]]:
    """The header as (name, kind, shape, [(dtype, nbytes)]), every field type- and
    range-checked, and each part's byte count consistent with its encoding; nothing here
    allocates more than the header's own size."""
    if not isinstance(items, list):
        raise MalformedUpdate("the header is not a list of tensors")
    out, names = [], set()
    for item in items:
        if not isinstance(item, dict) or item.keys() != {"name", "kind", "shape", "parts"}:
            raise MalformedUpdate("each header entry has exactly: name, kind, shape, parts")
        name, kind, shape, parts = item["name"], item["kind"], item["shape"], item["parts"]
        if not isinstance(name, str) or name in names:
            raise MalformedUpdate(f"tensor name {name!r}: not a string, or repeated")
        names.add(name)
        if kind not in DTYPES:
            raise MalformedUpdate(f"{name}: unknown encoding {kind!r}")
        if not isinstance(shape, list) or not all(_count(d) for d in shape):
            raise MalformedUpdate(f"{name}: shape {shape!r} is not a list of non-negative integers")
        if (
            not isinstance(parts, list)
            or len(parts) != len(DTYPES[kind])
            or not all(isinstance(p, list) and len(p) == 2 and isinstance(p[0], str) and _count(p[1]) for p in parts)
        ):
            raise MalformedUpdate(f"{name}: {kind} takes {len(DTYPES[kind])} parts of [dtype, byte count]")
        dtypes = [_dtype(name, d) for d, _ in parts]
        if kind != "raw" and [d.str for d in dtypes] != list(DTYPES[kind]):
            raise UnexpectedLayout(f"{name}: {kind} part dtypes {[d for d, _ in parts]}, expected {list(DTYPES[kind])}")
        layout = [(d, nbytes) for d, (_, nbytes) in zip(dtypes, parts, strict=True)]
        counts = []
        for d, nbytes in layout:
            if nbytes % d.itemsize:
                raise MalformedUpdate(f"{name}: {nbytes} bytes is not a whole number of {d.str} values")
            counts.append(nbytes // d.itemsize)
        size = math.prod(shape)
        if kind == "raw" and counts[0] != size:
            raise MalformedUpdate(f"{name}: {counts[0]} values for shape {tuple(shape)}")
        if kind == "topk" and not counts[0] == counts[1] <= size:
            raise MalformedUpdate(f"{name}: top-k of {counts[0]} indices, {counts[1]} values for shape {tuple(shape)}")
        if kind == "int8" and (counts[0] != size or counts[1] != 2):
            raise MalformedUpdate(f"{name}: int8 of {counts[0]} codes, {counts[1]} parameters for shape {tuple(shape)}")
        out.append((name, kind, tuple(shape), layout))
    return out


def _count(x: Any) -> bool:
    return type(x) is int and x >= 0


def _dtype(name: str, d: str) -> np.dtype:
    try:
        dtype = np.dtype(d)
    except TypeError:
        raise MalformedUpdate(f"{name}: dtype {d!r} is not a numpy dtype") from None
    if dtype.kind not in "biuf" or dtype.str != d:  # plain numbers, spelled canonically
        raise MalformedUpdate(f"{name}: dtype {d!r} is not a plain numeric dtype")
    return dtype


def _check_expected(header: list, expected: Mapping[str, tuple[int, ...]]) -> None:
    got = {name: (kind, shape, layout) for name, kind, shape, layout in header}
    if got.keys() != expected.keys():
        missing, extra = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
        raise UnexpectedLayout(f"tensor names differ (missing {missing}, unexpected {extra})")
    for name, (kind, shape, layout) in got.items():
        if shape != tuple(expected[name]):
            raise UnexpectedLayout(f"{name}: shape {shape}, expected {tuple(expected[name])}")
        if kind == "raw" and layout[0][0].str != "<f4":
            raise UnexpectedLayout(f"{name}: dtype {layout[0][0].name}, expected float32")


def _dense(kind: str, shape: tuple[int, ...], parts: list[np.ndarray]) -> np.ndarray:
    """The dense array of one entry whose part counts `_layout` has checked."""
    if kind == "raw":
        flat = parts[0]  # dtype as sent: the server's checks reject anything but float32
        if flat.flags.aligned:  # a view of the message's own copy
            return flat.reshape(shape)
    elif kind == "topk":
        size = math.prod(shape)
        idx, val = parts
        if idx.size and (idx.min() < 0 or idx.max() >= size):
            raise MalformedUpdate("top-k index out of range")
        if idx.size > 1 and not (np.diff(idx) > 0).all():
            raise MalformedUpdate("top-k indices not strictly increasing")
        flat = np.zeros(size, val.dtype)
        flat[idx] = val
    else:  # int8
        codes, (low, step) = parts
        flat = (low + codes.astype(np.float32) * step).astype(np.float32)
    return flat.copy().reshape(shape)
