"""Mask expansion: a 32-byte seed stretched into a vector of Z_{2^k} elements.

Bonawitz et al., CCS 2017, Sec. 4: masks are PRG(b_u) and PRG(s_uv). The PRG is AES-256 in
counter mode (NIST SP 800-38A) from pyca/cryptography, keystream read as little-endian
uint32/uint64 words. Every seed is used for a single expansion, so a zero counter block
is safe.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedmeta.errors import BadInput

SEED_BYTES = 32
_ZERO_BLOCK = bytes(16)


def expand(seed: bytes, length: int, dtype: np.dtype) -> np.ndarray:
    """`length` pseudorandom ring elements of unsigned `dtype` derived from `seed`."""
    if len(seed) != SEED_BYTES:
        raise BadInput("seed", f"{len(seed)} bytes", f"{SEED_BYTES} bytes")
    dtype = np.dtype(dtype)
    if dtype.kind != "u":
        raise BadInput("dtype", str(dtype), "an unsigned integer dtype")
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_ZERO_BLOCK)).encryptor()
    stream = encryptor.update(bytes(length * dtype.itemsize))
    return np.frombuffer(stream, dtype=dtype.newbyteorder("<"))  # (length,) read-only
