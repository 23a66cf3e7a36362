"""Shamir secret sharing of byte strings over the prime field GF(2^255 - 19).

A. Shamir, "How to share a secret", CACM 22(11), 1979. The secret is cut into 31-byte
chunks (each below the prime); every chunk gets its own random polynomial of degree t-1 and
share `i` holds the evaluations of all chunk polynomials at x = i. Any t shares give the
secret back by Lagrange interpolation at 0; t-1 shares are uniformly distributed whatever
the secret. Coefficients come from the OS (`secrets`) unless a private seam is handed a
byte source for reproducible tests.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from fedmeta.errors import BadInput, FedmetaError

PRIME = 2**255 - 19
CHUNK_BYTES = 31  # largest chunk whose integer value is always below PRIME
_ELEMENT_BYTES = 32
_INDEX_BYTES = 2
_MAX_SHARES = 2 ** (8 * _INDEX_BYTES) - 1

RandBytes = Callable[[int], bytes]


class NotEnoughShares(FedmetaError):
    """Fewer distinct shares than the threshold: the secret is information-theoretically hidden."""

    def __init__(self, got: int, threshold: int):
        self.got, self.threshold = got, threshold
        super().__init__(f"need {threshold} distinct shares to reconstruct, got {got}")


@dataclass(frozen=True)
class Share:
    """Evaluations at x = `index` of the polynomials of every chunk of a `length`-byte secret."""

    index: int
    length: int
    values: tuple[int, ...]

    def to_bytes(self) -> bytes:
        head = self.index.to_bytes(_INDEX_BYTES, "big") + self.length.to_bytes(4, "big")
        return head + b"".join(v.to_bytes(_ELEMENT_BYTES, "big") for v in self.values)

    @classmethod
    def from_bytes(cls, data: bytes) -> Share:
        head = _INDEX_BYTES + 4
        body = len(data) - head
        if body < 0 or body % _ELEMENT_BYTES:
            raise BadInput("share", f"{len(data)} bytes", f"{head} + a multiple of 32 bytes")
        index = int.from_bytes(data[:_INDEX_BYTES], "big")
        length = int.from_bytes(data[_INDEX_BYTES:head], "big")
        values = tuple(
            int.from_bytes(data[o : o + _ELEMENT_BYTES], "big")
            for o in range(head, len(data), _ELEMENT_BYTES)
        )
        if len(values) != _n_chunks(length) or any(v >= PRIME for v in values):
            raise BadInput("share", f"{len(data)} bytes", "a share produced by shamir.split")
        return cls(index, length, values)


def split(secret: bytes, n: int, t: int) -> list[Share]:
    """Split `secret` into `n` shares (indices 1..n) any `t` of which reconstruct it."""
    return _split(secret, n, t, secrets.token_bytes)


def reconstruct(shares: Sequence[Share], t: int) -> bytes:
    """The secret behind `t` (or more) shares of one `split`; raises NotEnoughShares below `t`."""
    if t < 1:
        raise BadInput("t", t, "an integer >= 1")
    distinct = {s.index: s for s in shares}
    if len(distinct) < t:
        raise NotEnoughShares(len(distinct), t)
    chosen = [distinct[i] for i in sorted(distinct)[:t]]
    if len({(s.length, len(s.values)) for s in chosen}) != 1:
        raise BadInput("shares", "mixed secret lengths", "shares of one split")
    return _interpolate_at_zero(chosen)


def _split(secret: bytes, n: int, t: int, randbytes: RandBytes) -> list[Share]:
    if not 1 <= t <= n <= _MAX_SHARES:
        raise BadInput("(n, t)", (n, t), f"1 <= t <= n <= {_MAX_SHARES}")
    chunks = [
        int.from_bytes(secret[o : o + CHUNK_BYTES], "big")
        for o in range(0, len(secret), CHUNK_BYTES)
    ]
    # one polynomial per chunk: constant term = chunk, t-1 uniform coefficients
    polys = [[c] + [_random_element(randbytes) for _ in range(t - 1)] for c in chunks]
    return [Share(x, len(secret), tuple(_horner(p, x) for p in polys)) for x in range(1, n + 1)]


def _interpolate_at_zero(shares: Sequence[Share]) -> bytes:
    """Lagrange interpolation at 0 through exactly these shares (no threshold check)."""
    weights = _lagrange_at_zero(tuple(s.index for s in shares))
    length = shares[0].length
    out = bytearray()
    for c in range(len(shares[0].values)):
        value = sum(w * s.values[c] for w, s in zip(weights, shares, strict=True)) % PRIME
        width = min(CHUNK_BYTES, length - c * CHUNK_BYTES)
        out += (value % (1 << (8 * width))).to_bytes(width, "big")
    return bytes(out)


@lru_cache(maxsize=4096)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Weights l_i(0) = prod_{j != i} x_j / (x_j - x_i) mod PRIME."""
    weights = []
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        weights.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(weights)


def _horner(coefficients: Sequence[int], x: int) -> int:
    acc = 0
    for a in reversed(coefficients):
        acc = (acc * x + a) % PRIME
    return acc


def _random_element(randbytes: RandBytes) -> int:
    # 40 bytes reduced mod a 255-bit prime: statistical distance from uniform < 2^-64
    return int.from_bytes(randbytes(40), "big") % PRIME


def _n_chunks(length: int) -> int:
    return -(-length // CHUNK_BYTES)
