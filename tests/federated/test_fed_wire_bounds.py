"""Decoding untrusted update bytes is bounded: every claimed name, shape, dtype and count is
checked against the model's shapes and the message's own length before anything is
allocated, and every defect is one error type (`MalformedUpdate` from `decode`,
`InvalidUpdate` from `check_update`), never a crash."""

import json
import random
import struct
import time
import tracemalloc

import pytest
import torch

from fedmeta.federated.compression import NoCompression, StochasticInt8, TopK
from fedmeta.federated.validation import InvalidUpdate, check_update
from fedmeta.federated.wire import MalformedUpdate, decode, encode

HUGE = 500_000_000  # claimed values: 2 GB as float32
REFERENCE = {"b": torch.zeros(30), "w": torch.zeros(20, 30)}
SHAPES = {k: tuple(v.shape) for k, v in REFERENCE.items()}
CODECS = {"raw": NoCompression(), "topk": TopK(0.1), "int8": StochasticInt8()}


def message(items, body: bytes = b"") -> bytes:
    head = json.dumps(items, separators=(",", ":")).encode()
    return b"FMU1" + struct.pack(">I", len(head)) + head + body


def honest(kind: str) -> bytes:
    g = torch.Generator().manual_seed(0)
    update = {k: torch.randn(v.shape, generator=g) for k, v in REFERENCE.items()}
    codec = CODECS[kind]
    return encode(codec.encode(update, codec.init(update), torch.Generator().manual_seed(1))[0])


def split(data: bytes) -> tuple[list, bytes]:
    (n,) = struct.unpack(">I", data[4:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


BIAS = {"name": "b", "kind": "raw", "shape": [30], "parts": [["<f4", 120]]}
BOMBS = {
    # the message: top-k of one value for a tensor claiming 5·10⁸ of them
    "topk": message([{"name": "w", "kind": "topk", "shape": [HUGE], "parts": [["<i4", 4], ["<f4", 4]]}], bytes(8)),
    "topk-empty": message([{"name": "w", "kind": "topk", "shape": [HUGE], "parts": [["<i4", 0], ["<f4", 0]]}]),
    "topk-beside-a-valid-tensor": message(
        [BIAS, {"name": "w", "kind": "topk", "shape": [HUGE, 1], "parts": [["<i4", 0], ["<f4", 0]]}], bytes(120)),
    "topk-extra-tensor": message(
        [BIAS, {"name": "w", "kind": "raw", "shape": [20, 30], "parts": [["<f4", 2400]]},
         {"name": "x", "kind": "topk", "shape": [HUGE], "parts": [["<i4", 0], ["<f4", 0]]}], bytes(2520)),
    "topk-claimed-count": message([{"name": "w", "kind": "topk", "shape": [20, 30], "parts": [["<i4", 4 * HUGE], ["<f4", 4 * HUGE]]}]),
    "raw": message([{"name": "w", "kind": "raw", "shape": [HUGE], "parts": [["<f4", 4 * HUGE]]}], bytes(8)),
    "header": message([{"name": "w", "kind": "raw", "shape": [20, 30], "parts": [["<f4", 2400]]}] + [0] * 1_000_000),
    "int8": message([{"name": "w", "kind": "int8", "shape": [HUGE], "parts": [["|u1", HUGE], ["<f4", 8]]}], bytes(16)),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_a_message_claiming_a_huge_size_is_refused_before_allocating(name):
    data = BOMBS[name]
    assert len(data) < (3000 if name != "header" else 2_100_000)  # the top-k one: 94 bytes
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(InvalidUpdate):
            check_update("7", data, REFERENCE)
        with pytest.raises(MalformedUpdate):
            decode(data, SHAPES)
        seconds = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert seconds < 1.0
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB allocated to refuse {len(data)} bytes"


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_honest_updates_decode_the_same_against_the_expected_shapes(kind):
    data = honest(kind)
    free, bound = decode(data), decode(data, SHAPES)
    checked = check_update("1", data, REFERENCE)
    assert free.keys() == bound.keys() == checked.keys() == REFERENCE.keys()
    for k in free:
        assert free[k].dtype == bound[k].dtype == torch.float32
        assert torch.equal(free[k], bound[k]) and torch.equal(free[k], checked[k])


def mutations(kind: str):
    """Defective variants of an honest message: (label, bytes)."""
    data = honest(kind)
    items, body = split(data)
    (n,) = struct.unpack(">I", data[4:8])
    yield "empty", b""
    yield "magic only", data[:4]
    yield "bad magic", b"FMU2" + data[4:]
    for cut in sorted({1, 5, 8, 9, 8 + n - 1, 8 + n, 8 + n + 1, len(data) - 4, len(data) - 1}):
        yield f"truncated to {cut}", data[:cut]
    yield "extended", data + b"\x00"
    yield "extended by a value", data + bytes(4)
    for length in (0, n - 1, n + 1, len(data), 2**32 - 1):
        yield f"header length {length}", data[:4] + struct.pack(">I", length) + data[8:]
    yield "header not JSON", message(None)[:8] + b"{" + data[9:]
    yield "header not UTF-8", data[:8] + b"\xff" * n + body
    for header in (None, 7, "x", {}, [None], [[]], [{}]):
        yield f"header {header!r}", message(header, body)

    def edited(label, index, **change):
        new = json.loads(json.dumps(items))
        new[index].update(change)
        return label, message(new, body)

    w = next(i for i, it in enumerate(items) if it["name"] == "w")
    parts = items[w]["parts"]
    for dtype in ("<f8", ">f4", "<i8", "<f2", "|u1", "|b1", "O", "V8", "<c8", "float32", "", "x" * 300, 7, None):
        yield edited(f"dtype {dtype!r}", w, parts=[[dtype, parts[0][1]]] + parts[1:])
    for count in (-4, -1, 3, 2**31, 2**32 + 4, 2**63, 2**64, 10**30, 4.0, "4", True, None):
        yield edited(f"count {count!r}", w, parts=[[parts[0][0], count]] + parts[1:])
        yield edited(f"last count {count!r}", w, parts=parts[:-1] + [[parts[-1][0], count]])
    yield edited("one part too many", w, parts=parts + [["<f4", 0]])
    yield edited("one part too few", w, parts=parts[:1])
    yield edited("part not a pair", w, parts=[parts[0] + [1]] + parts[1:])
    for shape in ([20, -30], [-20, -30], [600], [30, 20], [20, 30, 1], [], [2**63, 2**63], [HUGE], [20.0, 30],
                  ["20", 30], [[20], 30], None, 600):
        yield edited(f"shape {shape!r}", w, shape=shape)
    for kind_ in ("fp16", "", None, 3, "raw" if kind != "raw" else "topk"):
        yield edited(f"kind {kind_!r}", w, kind=kind_)
    for name in ("b", "v", "", None, 3):
        yield edited(f"name {name!r}", w, name=name)
    new = json.loads(json.dumps(items))
    new[w]["extra"] = 1
    yield "extra key", message(new, body)
    new = json.loads(json.dumps(items))
    del new[w]["shape"]
    yield "missing key", message(new, body)
    yield "tensor missing", message([it for i, it in enumerate(items) if i != w], body)
    yield "tensor repeated", message(items + [items[w]], body + body)
    rng = random.Random(kind)
    for i in range(200):  # random byte flips anywhere, header included
        flipped = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            flipped[rng.randrange(len(flipped))] ^= 1 << rng.randrange(8)
        yield f"flip {i}", bytes(flipped)


@pytest.mark.parametrize("kind", sorted(CODECS))
def test_defective_messages_are_rejected_cleanly(kind):
    """Each variant either decodes to the model's exact names, shapes and float32 (some
    byte flips land in values) or is refused with the one error type; never anything else."""
    refused = 0
    for label, data in mutations(kind):
        try:
            update = check_update("3", data, REFERENCE)
        except InvalidUpdate:
            refused += 1
            try:  # decode raises nothing else either (or decodes, and the values were refused)
                decode(data, SHAPES)
            except MalformedUpdate:
                pass
            except Exception as err:
                pytest.fail(f"{label}: decode raised {type(err).__name__}: {err}")
            continue
        except Exception as err:
            pytest.fail(f"{label}: check_update raised {type(err).__name__}: {err}")
        assert update.keys() == REFERENCE.keys(), label
        assert all(update[k].shape == REFERENCE[k].shape and update[k].dtype == torch.float32 for k in update), label
    assert refused > 100


def test_topk_indices_must_be_strictly_increasing():
    """The top-k encoder sends each index once, in order; a repeated index (which would
    overwrite a value) or an out-of-order one is malformed."""
    items, body = split(honest("topk"))
    w = next(i for i, it in enumerate(items) if it["name"] == "w")
    offset = sum(n for it in items[:w] for _, n in it["parts"])
    k = items[w]["parts"][0][1] // 4
    idx = list(struct.unpack(f"<{k}i", body[offset : offset + 4 * k]))
    for bad in ([idx[0]] + idx[:-1], idx[1:2] + idx[:1] + idx[2:]):
        data = message(items, body[:offset] + struct.pack(f"<{k}i", *bad) + body[offset + 4 * k :])
        with pytest.raises(InvalidUpdate, match="strictly increasing"):
            check_update("2", data, REFERENCE)
