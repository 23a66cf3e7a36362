"""Privacy–utility curve of the default demo: ε at δ against personalization accuracy.

The demo (`fedmeta run` with no config: FedMeta-MAML on federated digits, 100 training
clients with Dirichlet(0.5) label skew, 20 held-out clients, 60 rounds of DP-FedAvg with
client-level clipping C = 1 and Poisson sampling q = 0.2; McMahan et al. 2018, "Learning
Differentially Private Recurrent Language Models") is run once per noise multiplier σ, plus
without DP and with clipping but no noise (σ = 0, ε infinite). Secure aggregation and the
ledger are off: they change no number here (tests/federated/test_fed_privacy.py), only time.
Each run reports ε at δ from Rényi DP (Mironov 2017) and privacy loss distributions
(Koskela et al. 2020), both through dp-accounting, and the held-out clients' query accuracy
before and after 5 adaptation steps on their support sets (mean and 10th percentile), and
the run's membership-inference audit of the final model (loss-threshold attack, Yeom et al.
2018: training clients' examples vs held-out clients'; AUC and TPR at FPR 1%).

Central noise is seeded per run (`privacy.noise_seed`) so the table can be reproduced; real
runs draw it from the OS. The whole sweep is one process with one torch thread; CPU seconds
are the process time of each run.

Run from the repository root (10 seeds by default: about 13 CPU minutes; docs/privacy.md):
    python benchmarks/privacy_utility.py --out runs/privacy-utility [--seeds N] [--quick]
It writes results.csv, results.json, privacy_utility.png and one run folder per setting
and seed.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import NullFormatter, ScalarFormatter  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from fedmeta.config import Config, load_config  # noqa: E402
from fedmeta.federated.driver import run_federated  # noqa: E402
from fedmeta.privacy.accountant import Steps, epsilon_of  # noqa: E402
from fedmeta.privacy.noise import InsecureNoiseWarning  # noqa: E402
from fedmeta.rundir import RunDir  # noqa: E402

BASE = ["privacy.secure_aggregation='off'", "ledger.enabled=false", "run.threads=1"]
SIGMAS = (0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0)  # ε(δ=1e-5, PLD) from 129 down to 1.6
QUICK_SIGMAS = (1.0, 4.0)
QUICK_ROUNDS = 10
NO_DP, CLIP_ONLY = "no DP", "clip only (σ=0)"


def settings(sigmas: tuple[float, ...]) -> dict[str, list[str]]:
    """Setting name -> config overrides on top of BASE."""
    out = {NO_DP: ["privacy.dp='off'"], CLIP_ONLY: ["privacy.noise_multiplier=0.0"]}
    out.update({f"σ={s:g}": [f"privacy.noise_multiplier={s}"] for s in sigmas})
    return out


def epsilons(cfg: Config, rounds: int) -> tuple[float, float]:
    """ε at the config's δ after `rounds` rounds (RDP, PLD); infinite without noise."""
    dp = cfg.privacy
    if dp.dp == "off" or dp.noise_multiplier == 0:
        return math.inf, math.inf
    q = min(1.0, cfg.clients_per_round_count / cfg.federated.n_clients)
    history = (Steps(dp.noise_multiplier, q, rounds),)
    return epsilon_of(history, dp.delta, "rdp"), epsilon_of(history, dp.delta, "pld")


def run_one(name: str, overrides: list[str], seed: int, out: Path) -> dict:
    cfg = load_config(None, [*BASE, *overrides, f"run.seed={seed}", f"privacy.noise_seed={seed}"])
    folder = out / "runs" / f"{name.replace(' ', '_').replace('=', '')}-seed{seed}"
    epsilon_of.cache_clear()  # each run pays its own accounting, as a lone run would
    start = time.process_time()
    summary = run_federated(cfg, RunDir.create(folder, cfg), show_progress=False)
    cpu = time.process_time() - start
    eps_rdp, eps_pld = epsilons(cfg, summary["rounds"])
    final = summary["final"]
    return {
        "setting": name,
        "sigma": cfg.privacy.noise_multiplier if cfg.privacy.dp != "off" else None,
        "seed": seed,
        "rounds": summary["rounds"],
        "epsilon_rdp": eps_rdp,
        "epsilon_pld": eps_pld,
        "delta": cfg.privacy.delta,
        "acc_before": final["acc_before"],
        "acc_after": final["acc_after"],
        "acc_after_p10": final["acc_after_p10"],
        "mia_auc": summary["membership_audit"]["auc"],
        "mia_tpr_at_1pct": summary["membership_audit"]["tpr_at_fpr"]["0.01"],
        "cpu_seconds": round(cpu, 1),
    }


def mean_by_setting(rows: list[dict]) -> list[dict]:
    """One row per setting: metrics averaged over seeds, with the spread of acc_after."""
    out = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        group = [r for r in rows if r["setting"] == name]
        after = [r["acc_after"] for r in group]
        out.append(
            {
                **{
                    k: group[0][k]
                    for k in ("setting", "sigma", "rounds", "epsilon_rdp", "epsilon_pld", "delta")
                },
                "seeds": len(group),
                **{
                    k: statistics.fmean(r[k] for r in group)
                    for k in ("acc_before", "acc_after", "acc_after_p10", "mia_auc", "mia_tpr_at_1pct", "cpu_seconds")
                },
                "acc_after_sd": statistics.stdev(after) if len(after) > 1 else 0.0,
            }
        )
    return out


def plot(table: list[dict], path: Path, title: str) -> None:
    """Accuracy against ε (PLD, log scale); settings without a finite ε as horizontal lines."""
    finite = [r for r in table if math.isfinite(r["epsilon_pld"])]
    fig, ax = plt.subplots(figsize=(6, 4))
    eps = [r["epsilon_pld"] for r in finite]
    after_sd = [r["acc_after_sd"] for r in finite]
    ax.errorbar(
        eps,
        [r["acc_after"] for r in finite],
        yerr=after_sd,
        fmt="o-",
        capsize=2,
        label="after adaptation (mean ± sd over seeds)",
    )
    ax.plot(
        eps, [r["acc_after_p10"] for r in finite], "s--", label="after adaptation (p10 of clients)"
    )
    ax.plot(eps, [r["acc_before"] for r in finite], "^:", label="before adaptation (mean)")
    for r in finite:
        ax.annotate(
            f"σ={r['sigma']:g}",
            (r["epsilon_pld"], r["acc_after"]),
            textcoords="offset points",
            xytext=(0, 6),
            ha="center",
            fontsize=7,
        )
    for r, color in zip(
        (r for r in table if not math.isfinite(r["epsilon_pld"])), ("black", "gray")
    ):
        ax.axhline(
            r["acc_after"], color=color, lw=0.8, ls="-.", label=f"{r['setting']}: after (mean)"
        )
    ax.set_xscale("log")
    ax.set_xticks(
        [t for t in (1, 2, 5, 10, 20, 50, 100, 200) if min(eps) / 1.5 <= t <= max(eps) * 1.5]
    )
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"ε at δ = {table[0]['delta']:g} (PLD accountant)")
    ax.set_ylabel("held-out client accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--out", type=Path, required=True, help="a new folder for results and run folders"
    )
    ap.add_argument("--seeds", type=int, default=10, help="seeds per setting (0, 1, ...)")
    ap.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROUNDS} rounds, σ in {QUICK_SIGMAS}"
    )
    args = ap.parse_args()
    if (args.out / "runs").exists():
        sys.exit(f"--out {args.out}: holds runs already; give a new folder")
    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP convergence notes
    warnings.filterwarnings("ignore", category=InsecureNoiseWarning)  # seeded on purpose, see above
    base = load_config(None, BASE)
    torch.set_num_threads(base.run.threads)  # as `fedmeta run` does; run_federated leaves it
    rounds = QUICK_ROUNDS if args.quick else base.federated.rounds
    # evaluate only at the end: the curve needs the final model, and evaluations cost time
    extra = [f"federated.rounds={rounds}", f"federated.eval_every={rounds}"]
    rows = []
    for name, overrides in settings(QUICK_SIGMAS if args.quick else SIGMAS).items():
        for seed in range(args.seeds):
            row = run_one(name, [*overrides, *extra], seed, args.out)
            print(
                f"{name} seed {seed}: acc_after {row['acc_after']:.3f} in {row['cpu_seconds']} CPU s",
                flush=True,
            )
            rows.append(row)
    table = mean_by_setting(rows)
    finite = lambda rs: [{k: None if v == math.inf else v for k, v in r.items()} for r in rs]  # noqa: E731
    (args.out / "results.json").write_text(
        json.dumps({"runs": finite(rows), "table": finite(table)}, indent=1) + "\n"
    )
    with open(args.out / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    q = base.clients_per_round_count / base.federated.n_clients
    plot(
        table,
        args.out / "privacy_utility.png",
        f"FedMeta-MAML, federated digits, {rounds} rounds, q = {q:g}, C = {base.privacy.clip_norm:g};"
        f" {args.seeds} seed(s)",
    )
    fmt = lambda e: "∞" if math.isinf(e) else f"{e:.2f}"  # noqa: E731
    print_table(
        [
            "setting",
            "ε RDP",
            "ε PLD",
            "acc before",
            "acc after",
            "± sd",
            "acc after p10",
            "MIA AUC",
            "TPR@FPR 1%",
            "CPU s/run",
        ],
        [
            [
                r["setting"],
                fmt(r["epsilon_rdp"]),
                fmt(r["epsilon_pld"]),
                f"{r['acc_before']:.3f}",
                f"{r['acc_after']:.3f}",
                f"{r['acc_after_sd']:.3f}",
                f"{r['acc_after_p10']:.3f}",
                f"{r['mia_auc']:.3f}",
                f"{r['mia_tpr_at_1pct']:.3f}",
                f"{r['cpu_seconds']:.0f}",
            ]
            for r in table
        ],
    )
    print(f"wrote {args.out}/results.csv, results.json, privacy_utility.png")


if __name__ == "__main__":
    main()
