"""CKKS encrypted aggregation (TenSEAL) vs a plaintext sum: time, bytes and precision.

Ten clients encrypt float updates under the shared secret key, the server adds the
serialized ciphertexts with the keyless server context, one client decrypts the sum.
End-to-end time is key generation + all clients' encryption (run one after the other in
this process) + the server's addition + decryption.

    .venv/bin/python benchmarks/he_bench.py                     # 10 clients, 100k and 1M
    .venv/bin/python benchmarks/he_bench.py --dims 100000 --chains 60,40,40,60 60,60
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fedmeta.privacy.he import CKKSKeys, CKKSParams, server_add


def run(clients: int, dim: int, params: CKKSParams) -> dict[str, float]:
    rng = np.random.default_rng(0)
    updates = rng.normal(0, 0.1, size=(clients, dim)).astype(np.float32)  # (clients, dim)

    plain_s = float("inf")
    for _ in range(3):  # best of three: the first touch of the data is slower
        start = time.perf_counter()
        plain = updates.sum(axis=0, dtype=np.float64)
        plain_s = min(plain_s, time.perf_counter() - start)

    start = time.perf_counter()
    keys = CKKSKeys.generate(params)
    server_context = keys.server_context_bytes()
    keygen_s = time.perf_counter() - start

    start = time.perf_counter()
    encrypted = [keys.encrypt(u) for u in updates]
    encrypt_s = time.perf_counter() - start

    start = time.perf_counter()
    aggregate = server_add(server_context, encrypted)
    server_s = time.perf_counter() - start

    start = time.perf_counter()
    total = keys.decrypt_sum(aggregate)
    decrypt_s = time.perf_counter() - start

    return {
        "plain_s": plain_s,
        "encrypt_s": encrypt_s / clients,
        "server_s": server_s,
        "decrypt_s": decrypt_s,
        "e2e_s": keygen_s + encrypt_s + server_s + decrypt_s,
        "up_bytes": sum(map(len, encrypted[0])),
        "down_bytes": sum(map(len, aggregate)),
        "plain_bytes": dim * 4,
        "max_err": float(np.abs(total - plain).max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--chains", nargs="+", default=["60,60", "60,40,40,60"])
    args = parser.parse_args()

    print(f"{args.clients} clients, N=8192 (4096 slots per ciphertext), scale 2^40")
    header = (
        f"{'dim':>9} {'coeff bits':>12} | {'plain s':>8} | {'enc s/cli':>9} {'server s':>8} "
        f"{'dec s':>6} {'e2e s':>6} {'srv/plain':>9} | {'up MB':>7} {'up/plain':>8} "
        f"{'down MB':>7} | {'max abs err':>11}"
    )
    print(header)
    print("-" * len(header))
    for dim in args.dims:
        for chain in args.chains:
            bits = tuple(int(b) for b in chain.split(","))
            r = run(args.clients, dim, CKKSParams(coeff_mod_bit_sizes=bits))
            print(
                f"{dim:>9} {chain:>12} | {r['plain_s']:>8.4f} | {r['encrypt_s']:>9.3f} "
                f"{r['server_s']:>8.3f} {r['decrypt_s']:>6.3f} {r['e2e_s']:>6.2f} "
                f"{r['server_s'] / r['plain_s']:>9.0f} | {r['up_bytes'] / 1e6:>7.2f} "
                f"{r['up_bytes'] / r['plain_bytes']:>8.1f} {r['down_bytes'] / 1e6:>7.2f} | "
                f"{r['max_err']:>11.2e}",
                flush=True,
            )


if __name__ == "__main__":
    main()
