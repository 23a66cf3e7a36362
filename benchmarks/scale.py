"""What one federated round costs the server as the round grows, measured, for the
extrapolation to 1,000 and 100,000 clients per round in docs/deployment.md.

Workload: fed_speed's (FedMeta-MAML on the federated sinusoid, MLP 1-40-40-1, 1,761
parameters), in-process, with the signed ledger on.

- server s/round: a round's wall time minus the clients' exchange (sampling, admission:
  decoding, checks and commitments, aggregation, the strategy, the ledger append); the
  median of 3 rounds after a warm-up, one thread;
- bytes up/client: fedmeta's wire encoding of one update (as `bytes_up` counts it);
- ledger B/round: the bytes a round adds to the ledger: its entries' canonical JSON (the
  round entry, with every client's update commitment) plus a 32-byte leaf hash each and
  one signed tree head (SQLite's pages and indexes come on top); each round also stores
  its model once in `models/` (the model's wire size, whatever the clients);
- SecAgg+: the server's time of one secure sum over the same 1,761 values, 10% of the
  clients dropping after sharing keys (the costliest case), at the SecAgg+ degree
  `degree_for(n, 0.1)` gives; per neighbour = server time / (n x degree).

Run from the repository root: `python benchmarks/scale.py` (about 3 minutes).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fed_speed  # noqa: E402
from common import print_table  # noqa: E402
from fedmeta.config import Config  # noqa: E402
from fedmeta.federated.driver import run_federated  # noqa: E402
from fedmeta.federated.runtime import Runtime  # noqa: E402
from fedmeta.ledger import Ledger  # noqa: E402
from fedmeta.privacy.secagg.graph import SECAGG_PLUS, degree_for, min_threshold  # noqa: E402
from fedmeta.privacy.secagg.protocol import Phase  # noqa: E402
from fedmeta.privacy.secagg.simulate import secure_sum  # noqa: E402
from fedmeta.rundir import RunDir  # noqa: E402


def server_costs(n: int, rounds: int = 3) -> dict:
    """Median server seconds per round, bytes up per client, ledger bytes per round."""
    raw = fed_speed.config(n, n_clients=max(n, fed_speed.N_CLIENTS)).model_dump(exclude_none=True)
    folder = Path(tempfile.mkdtemp())
    raw["ledger"] = {"enabled": True, "server_key": str(folder / "server.pem")}
    raw["federated"].update(rounds=rounds + 1, eval_every=rounds + 1)
    cfg = Config.model_validate(raw)
    runtime = Runtime(cfg)
    exchange, rows = runtime.transport.exchange, []

    def timed(*args, **kwargs):
        start = time.perf_counter()
        out = exchange(*args, **kwargs)
        rows[-1]["exchange"] = time.perf_counter() - start
        return out

    runtime.transport.exchange = timed
    run_round = runtime.run_round

    def round_():
        rows.append({})
        start = time.perf_counter()
        out = run_round()
        rows[-1]["round"] = time.perf_counter() - start
        return out

    runtime.run_round = round_
    run_federated(cfg, RunDir.create(folder / "run", cfg), show_progress=False, runtime=runtime)
    server = [r["round"] - r["exchange"] for r in rows[1:]]
    metrics = RunDir(folder / "run").metrics()
    up = [m["bytes_up"] / n for m in metrics if m.get("bytes_up")]
    with Ledger.open(folder / "run") as ledger:
        bodies = [json.loads(body) | {"_bytes": len(body)} for _, body, _ in ledger.entries()]
    head_bytes = 8 + 32 + 8 + 64  # size, root, timestamp, Ed25519 signature
    per_round = [b["_bytes"] + 32 for b in bodies if b["type"] in ("round", "rejection")]
    rounds_logged = sum(b["type"] == "round" for b in bodies)
    ledger_bytes = sum(per_round) / rounds_logged + head_bytes  # one signed tree head per round
    return {"server": statistics.median(server), "bytes_up": up[-1], "ledger": ledger_bytes}


def secagg_server(n: int, dim: int, dropout: float = 0.1) -> tuple[float, int]:
    """The server's seconds of one SecAgg+ sum of n clients' `dim` values, and the degree."""
    degree = degree_for(n, dropout)
    rng = random.Random(0)
    inputs = [np.random.default_rng(i).uniform(-1, 1, dim) for i in range(n)]
    dropped = set(rng.sample(range(n), int(dropout * n)))
    _, stats = secure_sum(inputs, min_threshold(degree), {Phase.MASKED_INPUT: dropped},
                          neighbourhood=SECAGG_PLUS, degree=degree, rng=rng)
    return stats.server.total_seconds, degree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[100, 1000, 10_000])
    ap.add_argument("--secagg-clients", type=int, nargs="+", default=[100, 300, 1000])
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for n in args.clients:
        c = server_costs(n)
        rows.append([n, f"{c['server']:.3f}", f"{1e3 * c['server'] / n:.3f}", f"{c['bytes_up']:,.0f}",
                     f"{c['ledger']:,.0f}", f"{c['ledger'] / n:.0f}"])
        print(f"  {n} clients: {c}", file=sys.stderr, flush=True)
    print_table(["clients/round", "server s/round", "server ms/client", "bytes up/client", "ledger B/round",
                 "ledger B/client"], rows)
    dim = 1761
    rows = []
    for n in args.secagg_clients:
        seconds, degree = secagg_server(n, dim)
        rows.append([n, degree, f"{seconds:.2f}", f"{1e6 * seconds / (n * degree):.1f}"])
        print(f"  secagg+ {n} clients: {seconds:.2f} s, degree {degree}", file=sys.stderr, flush=True)
    print()
    print_table(["clients/round", "SecAgg+ degree", "server s (10% drop)", "server µs per client-neighbour"], rows)


if __name__ == "__main__":
    main()
