"""Encrypted aggregation as the server's summing step: CKKS (Cheon, Kim, Kim, Song,
ASIACRYPT 2017) through TenSEAL, the homomorphic twin of `secure.secure_weighted_sum`.

Each client encrypts its row [w·Δ, w] under the clients' shared key; the server adds the
ciphertexts holding only the key-free server context (`privacy.he.server_add`), so it learns
nothing, not even Σ w·Δ; a client decrypts the aggregate and the mean Σ w·Δ / Σ w follows.

Key setup (`distribute_keys`), once per run:
  1. a designated client generates the CKKS keys (`CKKSKeys.generate`);
  2. it sends `secret_context_bytes()` (secret and public key) to every other client over a
     confidential channel; each loads it with `CKKSKeys.from_secret_context`;
  3. the server receives `server_context_bytes()`: ring parameters only, no key.
The server must not forward single ciphertexts to clients, who could decrypt them, and a server
colluding with any one client learns every update (see `privacy.he`).

CKKS is approximate: every aggregate coordinate must stay below 2^(log q₀ − log Δ − 2) in
magnitude (q₀ the data prime, Δ the scale; 2^18 for the default 60-bit prime and 2^40 scale)
or it wraps around silently, so weights are refused if Σ_i max|row_i| could reach it (divide
example counts by `secure.weight_scale`). Within range, the error is about 1e-9 per client
and coordinate; `HEStats.max_abs_error` reports the measured one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tenseal as ts

from fedmeta.errors import BadInput
from fedmeta.params import Params, unflatten, weighted_rows
from fedmeta.privacy.he import CKKSKeys, CKKSParams, server_add


@dataclass(frozen=True)
class KeySetup:
    """What each party holds after key distribution, and what distribution cost."""

    clients: CKKSKeys  # the shared secret context, as a receiving client loaded it
    server_context: bytes  # all the server holds: ring parameters, no key
    secret_context_bytes: int  # sent confidentially to each client but the generating one
    seconds: float  # generation, serialization and one client's load


def distribute_keys(params: CKKSParams | None = None) -> KeySetup:
    """Steps 1–3 of the module docstring, in-process."""
    t0 = time.perf_counter()
    dealer = CKKSKeys.generate(params)  # the designated client
    secret = dealer.secret_context_bytes()
    received = CKKSKeys.from_secret_context(secret)  # what every other client loads
    return KeySetup(received, dealer.server_context_bytes(), len(secret), time.perf_counter() - t0)


@dataclass(frozen=True)
class HEStats:
    """Costs of one encrypted sum, and its error against the plaintext sum."""

    client_bytes: tuple[int, ...]  # ciphertext bytes each client sent
    client_seconds: tuple[float, ...]  # each client's encrypt + serialize time
    aggregate_bytes: int  # the summed ciphertexts, sent back for decryption
    server_seconds: float  # deserialize and add, keyless
    decrypt_seconds: float
    max_abs_error: float  # max |decrypted − plaintext| over coordinates of [Σ w·Δ, Σ w]

    def client_bytes_sent_per_client(self) -> float:
        return sum(self.client_bytes) / len(self.client_bytes)

    def client_seconds_per_client(self) -> float:
        return sum(self.client_seconds) / len(self.client_seconds)


def magnitude_limit(server_context: bytes) -> float:
    """Largest |coordinate| an aggregate may reach without wrapping: 2^(log q₀ − log Δ − 2)."""
    context = ts.context_from(server_context)
    data_bits = context.seal_context().data.first_context_data().total_coeff_modulus_bit_count()
    return 2.0 ** (data_bits - 2) / context.global_scale


def encrypted_weighted_sum(
    updates: list[Params], weights: list[float], keys: CKKSKeys
) -> tuple[Params, float, HEStats]:
    """(Σ w_i Δ_i, Σ w_i) computed by CKKS: clients encrypt, a keyless server adds, a client
    decrypts. Tensors keep the names, shapes and dtypes of `updates[0]`."""
    rows = weighted_rows(updates, weights)  # (clients, dim + 1)
    server_context = keys.server_context_bytes()
    limit, reach = magnitude_limit(server_context), float(np.abs(rows).max(axis=1).sum())
    if reach >= limit:
        raise BadInput(
            "weights",
            f"Σ max|w·Δ, w| = {reach:.3g}",
            f"< {limit:.3g} (CKKS range; scale the weights down)",
        )
    encrypted, seconds = [], []
    for row in rows:
        t0 = time.perf_counter()
        encrypted.append(keys.encrypt(row))
        seconds.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    aggregate = server_add(server_context, encrypted)
    server_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    total = keys.decrypt_sum(aggregate)  # (dim + 1,)
    decrypt_seconds = time.perf_counter() - t0
    stats = HEStats(
        client_bytes=tuple(sum(map(len, e)) for e in encrypted),
        client_seconds=tuple(seconds),
        aggregate_bytes=sum(map(len, aggregate)),
        server_seconds=server_seconds,
        decrypt_seconds=decrypt_seconds,
        max_abs_error=float(np.abs(total - rows.sum(axis=0)).max()),
    )
    return unflatten(total[:-1], updates[0]), float(total[-1]), stats
