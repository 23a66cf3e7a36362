"""Encrypted aggregation of updates with CKKS (TenSEAL): the server adds what it cannot read.

Cheon, Kim, Kim, Song, "Homomorphic Encryption for Arithmetic of Approximate Numbers",
ASIACRYPT 2017, through TenSEAL (Benaissa et al., 2021) over Microsoft SEAL. Parameters are
checked against the Homomorphic Encryption Standard (Albrecht et al., 2018, Table 1, uniform
ternary secret, 128-bit classical security): the total coefficient modulus must not exceed
the listed bits for the ring dimension N.

Key holding: the clients share one secret key. A designated client calls
`CKKSKeys.generate()` and hands `secret_context_bytes()` to the other clients over a
confidential channel; the server only ever receives `server_context_bytes()`, which holds
the ring parameters and no key at all, enough to deserialize and add ciphertexts and not to
encrypt or decrypt. Any client can decrypt any single update it sees, so the server must
not forward individual ciphertexts, and a server colluding with one client learns
everything: CKKS here protects updates from the server, not from a coalition.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from fedmeta.errors import BadInput

# Homomorphic Encryption Standard, Table 1: max log2(q) for 128-bit security (ternary secret)
HE_STANDARD_MAX_LOG_Q = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}


@dataclass(frozen=True)
class CKKSParams:
    """Ring dimension N, coefficient modulus chain (bits; last is SEAL's special prime), scale."""

    poly_modulus_degree: int = 8192
    # aggregation only adds: one 60-bit data prime (20 bits above the 2^40 scale) plus the
    # special prime. (60, 40, 40, 60) would allow two plaintext multiplications at 2.5x the
    # bytes and 2x the time (benchmarks/he_bench.py)
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 60)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        n = self.poly_modulus_degree
        if n not in HE_STANDARD_MAX_LOG_Q:
            raise BadInput("poly_modulus_degree", n, f"one of {sorted(HE_STANDARD_MAX_LOG_Q)}")
        log_q = sum(self.coeff_mod_bit_sizes)
        if len(self.coeff_mod_bit_sizes) < 2 or log_q > HE_STANDARD_MAX_LOG_Q[n]:
            raise BadInput(
                "coeff_mod_bit_sizes",
                self.coeff_mod_bit_sizes,
                f"at least 2 primes totalling <= {HE_STANDARD_MAX_LOG_Q[n]} bits for N={n}"
                " (128-bit security, HE standard)",
            )
        if not 20 <= self.scale_bits < self.coeff_mod_bit_sizes[0]:
            raise BadInput("scale_bits", self.scale_bits, f"in [20, {self.coeff_mod_bit_sizes[0]})")

    @property
    def slots(self) -> int:
        """Floats per ciphertext: N/2."""
        return self.poly_modulus_degree // 2


class CKKSKeys:
    """The clients' shared CKKS secret context: encrypts updates and decrypts the aggregate."""

    def __init__(self, context: ts.Context):
        if not context.is_private():
            raise BadInput("context", "a context without secret key", "the clients' secret context")
        self._context = context
        parms = context.seal_context().data.key_context_data().parms()
        self.slots = parms.poly_modulus_degree() // 2  # floats per ciphertext

    @classmethod
    def generate(cls, params: CKKSParams | None = None) -> CKKSKeys:
        """Fresh keys (SEAL draws randomness from the OS)."""
        params = params or CKKSParams()
        context = ts.context(
            ts.SCHEME_TYPE.CKKS,
            poly_modulus_degree=params.poly_modulus_degree,
            coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        )
        context.global_scale = 2.0**params.scale_bits
        return cls(context)

    @classmethod
    def from_secret_context(cls, data: bytes) -> CKKSKeys:
        """Keys received from the key-generating client."""
        return cls(load_context(data))

    def secret_context_bytes(self) -> bytes:
        """Everything a fellow client needs, secret key included: send it confidentially."""
        return self._context.serialize(
            save_public_key=True,
            save_secret_key=True,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def server_context_bytes(self) -> bytes:
        """Ring parameters only: enough to deserialize and add ciphertexts, not to decrypt."""
        return self._context.serialize(
            save_public_key=False,
            save_secret_key=False,
            save_galois_keys=False,
            save_relin_keys=False,
        )

    def encrypt(self, vector: np.ndarray) -> list[bytes]:
        """One serialized ciphertext per block of N/2 values of a 1-D vector."""
        vector = np.asarray(vector, dtype=np.float64)
        if vector.ndim != 1 or not np.all(np.isfinite(vector)):
            raise BadInput("vector", f"shape {vector.shape}", "a 1-D vector of finite floats")
        step = self.slots
        return [
            ts.ckks_vector(self._context, vector[i : i + step]).serialize()
            for i in range(0, len(vector), step)
        ]

    def decrypt_sum(self, aggregate: Sequence[bytes]) -> np.ndarray:
        """The plaintext vector behind `server_add`'s result."""
        parts = [ts.ckks_vector_from(self._context, block).decrypt() for block in aggregate]
        return np.concatenate(parts) if parts else np.zeros(0)


def server_add(server_context: bytes, updates: Sequence[Sequence[bytes]]) -> list[bytes]:
    """Block-wise sum of the clients' encrypted updates, computed without any key."""
    context = load_context(server_context)
    if context.is_private():
        raise BadInput("server_context", "a context with a secret key", "server_context_bytes()")
    lengths = {len(u) for u in updates}
    if len(lengths) != 1:
        raise BadInput(
            "updates", f"block counts {sorted(lengths)}", "equal-length encrypted updates"
        )
    total: list[ts.CKKSVector] = []
    for update in updates:
        blocks = [load_vector(context, b) for b in update]
        total = blocks if not total else [a + b for a, b in zip(total, blocks, strict=True)]
    return [block.serialize() for block in total]


def load_context(data: bytes) -> ts.Context:
    try:
        return ts.context_from(data)
    except Exception as exc:  # TenSEAL raises bare exceptions on malformed input
        raise BadInput("context", f"{len(data)} bytes", "a serialized TenSEAL context") from exc


def load_vector(context: ts.Context, data: bytes) -> ts.CKKSVector:
    try:
        return ts.ckks_vector_from(context, data)
    except Exception as exc:  # as above
        raise BadInput("ciphertext", f"{len(data)} bytes", "a serialized CKKS vector") from exc
