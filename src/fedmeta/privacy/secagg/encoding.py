"""Fixed-point encoding of float updates into the ring Z_{2^k} for secure summation.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017, Sec. 3: inputs are vectors over Z_R so that masks cancel modulo R. A float x,
clipped to [-clip, clip], becomes round(x * scale) in two's complement modulo 2^k. The sum
of n such values decodes exactly (up to rounding) as long as it never wraps, i.e.
n * clip * scale < 2^(k-1); the codec picks the largest power-of-two scale that meets this
for its number of clients and refuses a scale that would not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedmeta.errors import BadInput

_DTYPES = {32: np.dtype("<u4"), 64: np.dtype("<u8")}
_SIGNED = {32: np.dtype("<i4"), 64: np.dtype("<i8")}


@dataclass(frozen=True)
class FixedPointCodec:
    """Encodes clipped floats as Z_{2^bits} elements so that `n_clients` of them sum safely."""

    clip: float
    n_clients: int
    bits: int = 32
    scale: float | None = None  # None: the largest power of two that cannot overflow

    def __post_init__(self) -> None:
        if self.bits not in _DTYPES:
            raise BadInput("bits", self.bits, "32 or 64")
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise BadInput("clip", self.clip, "a finite float > 0")
        if not (isinstance(self.n_clients, int) and self.n_clients >= 1):
            raise BadInput("n_clients", self.n_clients, "an integer >= 1")
        bound = self.capacity / (self.n_clients * self.clip)  # scale must stay below this
        if self.scale is None:
            # float64 rounding keeps at most 53 bits: cap the scale there for 64-bit rings
            chosen = 2.0 ** min(math.floor(math.log2(bound)), 52 - math.ceil(math.log2(self.clip)))
            if chosen * self.n_clients * self.clip >= self.capacity:
                chosen /= 2
            object.__setattr__(self, "scale", chosen)
        elif not (self.scale > 0 and self.n_clients * self.clip * self.scale < self.capacity):
            raise BadInput(
                "scale",
                self.scale,
                f"0 < scale < {bound:.6g} so that {self.n_clients} clients x clip {self.clip}"
                f" cannot wrap Z_2^{self.bits}",
            )
        if self.resolution > self.clip:
            raise BadInput(
                "n_clients",
                self.n_clients,
                f"few enough that Z_2^{self.bits} keeps a resolution below clip {self.clip}",
            )

    @property
    def dtype(self) -> np.dtype:
        return _DTYPES[self.bits]

    @property
    def capacity(self) -> int:
        """Largest magnitude a signed sum may reach: 2^(bits-1)."""
        return 2 ** (self.bits - 1)

    @property
    def resolution(self) -> float:
        """Quantisation step of one value; the decoded sum of m values is within m/2 steps."""
        return 1.0 / self.scale

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Clip to [-clip, clip] and map to Z_{2^bits}; returns a uint array of x's shape."""
        x = np.asarray(x, dtype=np.float64)
        if not np.all(np.isfinite(x)):
            raise BadInput("update", "non-finite values", "finite floats")
        q = np.rint(np.clip(x, -self.clip, self.clip) * self.scale).astype(np.int64)
        return q.astype(_SIGNED[self.bits]).view(self.dtype)

    def decode(self, total: np.ndarray) -> np.ndarray:
        """Floats from the ring sum of at most `n_clients` encodings."""
        total = np.asarray(total)
        if total.dtype != self.dtype:
            raise BadInput("total.dtype", str(total.dtype), str(self.dtype))
        return total.view(_SIGNED[self.bits]).astype(np.float64) / self.scale
