"""Wire format of the SecAgg messages (Bonawitz et al., CCS 2017, Fig. 4, rounds 0-3).

Each message is a dataclass with `to_bytes`/`from_bytes`: a one-byte tag, then big-endian
4-byte integers, length-prefixed byte strings and id-keyed maps. The state machines in
`protocol.py` only ever exchange these bytes, so any transport can carry them.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar, Self

from fedmeta.errors import BadInput

_U32 = struct.Struct(">I")


class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = memoryview(data), 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise BadInput("message", f"{len(self.data)} bytes", "a complete SecAgg message")
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def blob(self) -> bytes:
        return self.take(self.u32())

    def ids(self) -> frozenset[int]:
        return frozenset(self.u32() for _ in range(self.u32()))

    def blob_map(self) -> dict[int, bytes]:
        return {self.u32(): self.blob() for _ in range(self.u32())}


def _blob(b: bytes) -> bytes:
    return _U32.pack(len(b)) + b


def _ids(ids: frozenset[int]) -> bytes:
    return _U32.pack(len(ids)) + b"".join(_U32.pack(i) for i in sorted(ids))


def _blob_map(m: Mapping[int, bytes]) -> bytes:
    return _U32.pack(len(m)) + b"".join(_U32.pack(k) + _blob(m[k]) for k in sorted(m))


class _Message:
    TAG: ClassVar[int]

    def _body(self) -> bytes:
        raise NotImplementedError

    @classmethod
    def _parse(cls, r: _Reader) -> Self:
        raise NotImplementedError

    def to_bytes(self) -> bytes:
        return bytes([self.TAG]) + self._body()

    @classmethod
    def from_bytes(cls, data: bytes) -> Self:
        if not data or data[0] != cls.TAG:
            raise BadInput("message", data[:1].hex() or "empty", f"a {cls.__name__} message")
        r = _Reader(data)
        r.pos = 1
        msg = cls._parse(r)
        if r.pos != len(data):
            raise BadInput("message", f"{len(data) - r.pos} trailing bytes", "no trailing bytes")
        return msg


@dataclass(frozen=True)
class AdvertiseKeys(_Message):
    """Round 0, client -> server: X25519 public keys for share encryption (c) and masks (s)."""

    TAG: ClassVar[int] = 0
    sender: int
    c_public: bytes
    s_public: bytes

    def _body(self) -> bytes:
        return _U32.pack(self.sender) + _blob(self.c_public) + _blob(self.s_public)

    @classmethod
    def _parse(cls, r: _Reader) -> AdvertiseKeys:
        return cls(r.u32(), r.blob(), r.blob())


@dataclass(frozen=True)
class KeyBroadcast(_Message):
    """Round 0, server -> client: the advertised keys of the client's live neighbours."""

    TAG: ClassVar[int] = 1
    keys: dict[int, tuple[bytes, bytes]]  # id -> (c_public, s_public)

    def _body(self) -> bytes:
        return _blob_map({i: _blob(c) + _blob(s) for i, (c, s) in self.keys.items()})

    @classmethod
    def _parse(cls, r: _Reader) -> KeyBroadcast:
        keys = {}
        for i, pair in r.blob_map().items():
            inner = _Reader(pair)
            keys[i] = (inner.blob(), inner.blob())
        return cls(keys)


@dataclass(frozen=True)
class ShareKeys(_Message):
    """Round 1, client -> server: encrypted shares of b_u and s_u^SK, one per neighbour."""

    TAG: ClassVar[int] = 2
    sender: int
    ciphertexts: dict[int, bytes]  # recipient -> AEAD ciphertext

    def _body(self) -> bytes:
        return _U32.pack(self.sender) + _blob_map(self.ciphertexts)

    @classmethod
    def _parse(cls, r: _Reader) -> ShareKeys:
        return cls(r.u32(), r.blob_map())


@dataclass(frozen=True)
class ShareDelivery(_Message):
    """Round 1, server -> client: the ciphertexts addressed to this client, by sender."""

    TAG: ClassVar[int] = 3
    ciphertexts: dict[int, bytes]  # sender -> AEAD ciphertext

    def _body(self) -> bytes:
        return _blob_map(self.ciphertexts)

    @classmethod
    def _parse(cls, r: _Reader) -> ShareDelivery:
        return cls(r.blob_map())


@dataclass(frozen=True)
class MaskedInput(_Message):
    """Round 2, client -> server: y_u as little-endian ring elements."""

    TAG: ClassVar[int] = 4
    sender: int
    masked: bytes

    def _body(self) -> bytes:
        return _U32.pack(self.sender) + _blob(self.masked)

    @classmethod
    def _parse(cls, r: _Reader) -> MaskedInput:
        return cls(r.u32(), r.blob())


@dataclass(frozen=True)
class UnmaskRequest(_Message):
    """Round 3, server -> client: who sent masked inputs and who dropped after sharing keys."""

    TAG: ClassVar[int] = 5
    survivors: frozenset[int]
    dropped: frozenset[int]

    def _body(self) -> bytes:
        return _ids(self.survivors) + _ids(self.dropped)

    @classmethod
    def _parse(cls, r: _Reader) -> UnmaskRequest:
        return cls(r.ids(), r.ids())


@dataclass(frozen=True)
class UnmaskShares(_Message):
    """Round 3, client -> server: shares of b_u for survivors and of s_u^SK for dropped ones."""

    TAG: ClassVar[int] = 6
    sender: int
    self_mask_shares: dict[int, bytes]  # survivor id -> share of b_u
    key_shares: dict[int, bytes]  # dropped id -> share of s_u^SK

    def _body(self) -> bytes:
        return (
            _U32.pack(self.sender) + _blob_map(self.self_mask_shares) + _blob_map(self.key_shares)
        )

    @classmethod
    def _parse(cls, r: _Reader) -> UnmaskShares:
        return cls(r.u32(), r.blob_map(), r.blob_map())
