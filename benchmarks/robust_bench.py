"""Robust aggregation: speed next to Flower's aggregation functions, and how far each
aggregate lands from the honest clients' mean under each attack.

Workload: one round of n = 100 clients, each update 100 000 float32 parameters (a
1000 x 99 matrix and a 1000 vector). Honest updates are μ + ε_i with μ and ε_i drawn
N(0, 1) per coordinate, so each client's noise is as large as the common direction.

- Speed: seconds per aggregation of fedmeta's aggregators (`make_robust`) and of Flower
  1.41's `flwr.server.strategy.aggregate` functions on the same updates as numpy arrays
  (`aggregate_median`, `aggregate_trimmed_avg`, `aggregate_krum` with `to_keep` 0 and
  n − f); before timing, their outputs are checked to agree. Timed in rounds that visit
  every function once (median over `--repeats` rounds of the mean of 3 back-to-back calls).
- Robustness: f = 20 of the 100 clients are Byzantine and send, instead of their honest
  update Δ: −Δ (sign flip), 100·Δ (scaling, γ = n: model replacement), Δ + N(0, 10²)
  (Gaussian), or "a little is enough" computed from all 80 honest updates with the
  paper's z. Reported: ‖aggregate − honest mean‖ / ‖honest mean‖, where the honest mean
  is that of the 80 honest clients ("none": the 20 send their honest updates too).
  Trimmed mean cuts β = 0.2 = f/n per side; Krum and Multi-Krum assume f = 20; norm
  bounding clips to the median norm of the honest updates.

Run from the repository root: `OMP_NUM_THREADS=1 python benchmarks/robust_bench.py` (about
1.5 minutes).
"""

from __future__ import annotations

import argparse
import functools
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from flwr.server.strategy import aggregate as flower

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, print_table  # noqa: E402
from fedmeta.federated.attacks import make_attack  # noqa: E402
from fedmeta.federated.robust import make_robust  # noqa: E402
from fedmeta.params import Params, global_norm  # noqa: E402

N, F = 100, 20
SHAPES = {"w": (1000, 99), "b": (1000,)}
AGGREGATORS = {
    "mean": {},
    "median": {},
    "trimmed_mean": {"trim_fraction": F / N},
    "krum": {"byzantine_clients": F},
    "multikrum": {"byzantine_clients": F},
    "geometric_median": {},
}
ATTACKS = {
    "sign_flip": {"scale": 1.0},
    "scaling": {"scale": float(N)},
    "gaussian": {"noise_std": 10.0},
    "little_is_enough": {"byzantine_clients": F},
}


def honest_updates(generator: torch.Generator) -> list[Params]:
    mu = {k: torch.randn(s, generator=generator) for k, s in SHAPES.items()}
    return [{k: v + torch.randn(v.shape, generator=generator) for k, v in mu.items()} for _ in range(N)]


def flower_functions(updates: list[Params]) -> dict[str, Callable[[], list[np.ndarray]]]:
    results = [([u[k].numpy() for k in SHAPES], 1) for u in updates]
    return {
        "median": lambda: flower.aggregate_median(results),
        "trimmed_mean": lambda: flower.aggregate_trimmed_avg(results, F / N),
        "krum": lambda: flower.aggregate_krum(results, F, 0),
        "multikrum": lambda: flower.aggregate_krum(results, F, N - F),
    }


def speed(updates: list[Params], repeats: int) -> None:
    weights = [1.0] * N
    ours = {name: functools.partial(make_robust(name, **o), updates, weights) for name, o in AGGREGATORS.items()}
    theirs = flower_functions(updates)
    for name, fn in theirs.items():
        ref, got = fn(), ours[name]()
        gap = max(float(np.abs(r - got[k].numpy()).max()) for r, k in zip(ref, SHAPES))
        if gap > 1e-4:
            raise SystemExit(f"{name}: fedmeta and Flower differ by {gap}")
    fns = {}  # each of ours right next to Flower's counterpart
    for name, fn in ours.items():
        fns[("fedmeta", name)] = fn
        if name in theirs:
            fns[("flower", name)] = theirs[name]
    t = interleaved_medians(fns, calls=3, repeats=repeats)
    rows = []
    for name in AGGREGATORS:
        mine, peer = t[("fedmeta", name)], t.get(("flower", name))
        rows.append([name, f"{mine:.3f}", "" if peer is None else f"{peer:.3f}",
                     "" if peer is None else f"{peer / mine:.1f}x"])
    print(f"seconds per aggregation, {N} clients x {sum(np.prod(s) for s in SHAPES.values()):,} parameters")
    print_table(["aggregator", "fedmeta s", "Flower s", "Flower / fedmeta"], rows)


def robustness(updates: list[Params], generator: torch.Generator) -> None:
    byzantine, honest = updates[:F], updates[F:]
    weights = [1.0] * N
    target = make_robust("mean")(honest, [1.0] * len(honest))
    scale = global_norm(target)
    bound = float(np.median([global_norm(h) for h in honest]))
    aggregators = {name: make_robust(name, **o) for name, o in AGGREGATORS.items()}
    aggregators["norm_bound"] = make_robust("norm_bound", norm_bound=bound)
    sent = {"none": updates}
    for name, options in ATTACKS.items():
        attack = make_attack(name, **options)
        sent[name] = [attack(d, honest, generator) for d in byzantine] + honest
    rows = []
    for name, aggregate in aggregators.items():
        row = [name]
        for batch in sent.values():
            out = aggregate(batch, weights)
            row.append(f"{global_norm({k: out[k] - target[k] for k in out}) / scale:.3g}")
        rows.append(row)
    print(f"\n‖aggregate − honest mean‖ / ‖honest mean‖, f = {F} of n = {N} clients Byzantine")
    print_table(["aggregator", *sent], rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    updates = honest_updates(generator)
    speed(updates, args.repeats)
    robustness(updates, generator)


if __name__ == "__main__":
    main()
