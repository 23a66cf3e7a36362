"""The applications' tables in docs/applications.md: methods x figures, mean ± sd over seeds.

Each application is its config in `configs/apps/` run as it ships and with the overrides
that make each method (below), for `--seeds` seeds (run.seed = 0, 1, ...), with the DP
noise seeded (`privacy.noise_seed` = the run's seed) so that a table reproduces. Every run
is kept under `--out` (report, ledger), so any figure can be traced to its run folder, and
a rerun with the same `--out` reads the runs that finished instead of repeating them.

- Figures are the held-out owners' (users, banks, clinics that never trained), pooled
  over their query sets (`meta.eval_metrics`), before and after adaptation on their
  support sets (`meta.eval_inner_steps` steps of `meta.inner_lr`).
- "local only" trains nothing: each held-out owner adapts the untrained network on its
  own support set, with 50 steps.
- CPU s is this process's CPU time for the run (both cores of a 2-core machine may be
  busy); bytes/round is client-to-server traffic per round; ε at the config's δ for DP runs;
  audit AUC is the membership-inference audit of the final model (0.5 = no leak seen);
  ledger: every run's signed ledger verified at its end.

Run from the repository root: `python benchmarks/applications.py movielens` (also
`credit`, `covid`, or `all`); `--seeds 3` by default.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fedmeta
from fedmeta.data import movielens

NO_DP = {"privacy.dp": "off", "privacy.secure_aggregation": "off"}
MOVIELENS_FEATURES = movielens.FEATURES

APPS: dict[str, dict[str, Any]] = {
    "movielens": {
        "config": "configs/apps/movielens-coldstart.toml",
        "metrics": ("rmse", "mae"),
        "methods": {
            "local only (no federation)": "local",
            "FedAvg (+ fine-tuning: after)": {**NO_DP, "federated.clients.procedure": "sgd"},
            "Per-FedAvg": {**NO_DP, "federated.clients.procedure": "perfedavg"},
            "FedMeta-Reptile": {**NO_DP, "meta.algorithm": "reptile"},
            "FedMeta-MAML": dict(NO_DP),
            "FedMeta-MAML + movie embedding (movielens-embedding.toml)": {
                **NO_DP, "data.features": [*MOVIELENS_FEATURES, "movie"], "data.index_columns": ["movie"],
                "model.embedding_dim": 8},
            "centralized MAML (every user, every round)": {
                **NO_DP, "federated.clients_per_round": 380, "federated.clients.local_steps": 1, "federated.rounds": 300},
            "FedMeta-MAML, user-level DP + SecAgg+ (as shipped)": {},
        },
        "support_sizes": {"methods": ("FedAvg (+ fine-tuning: after)", "FedMeta-MAML"), "sizes": (5, 20)},
    },
    "credit": {
        "config": "configs/apps/credit-banks.toml",
        "metrics": ("auc", "balanced_acc", "acc"),
        "methods": {
            "FedAvg (+ fine-tuning: after)": {"federated.clients.procedure": "sgd"},
            "FedProx μ=0.1 (+ fine-tuning: after)": {"federated.clients.procedure": "fedprox",
                                                     "federated.clients.mu": 0.1},
            "FedMeta-MAML (as shipped)": {},
            "FedMeta-MAML, one poisoning bank (sign flip x20)": {
                "federated.attack.name": "sign_flip", "federated.attack.scale": 20.0, "federated.attack.fraction": 0.04},
            "  ... with the coordinate-wise median": {
                "federated.attack.name": "sign_flip", "federated.attack.scale": 20.0, "federated.attack.fraction": 0.04,
                "federated.robust.rule": "median"},
            "FedMeta-MAML, bank-level DP + SecAgg+ (30 rounds)": {
                "privacy.dp": "central", "privacy.clip_norm": 1.0, "privacy.noise_multiplier": 1.5,
                "privacy.delta": 1e-3, "privacy.secure_aggregation": "secagg+", "federated.rounds": 30},
        },
    },
    "covid": {
        "config": "configs/apps/covid-clinics.toml",
        "metrics": ("auc", "balanced_acc"),
        "methods": {
            "local only (no federation)": "local",
            "FedAvg (+ fine-tuning: after)": {**NO_DP, "federated.clients.procedure": "sgd"},
            "FedMeta-MAML": dict(NO_DP),
            "FedMeta-MAML, clinic-level DP + SecAgg+ (as shipped)": {},
        },
    },
}


def local_only(config: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """The held-out owners' figures after adapting the untrained network on their own
    support sets (50 steps), nothing federated."""
    from fedmeta.config import load_config
    from fedmeta.federated.runtime import Runtime

    sets = [f"{k}={json.dumps(v)}" for k, v in {**overrides, **NO_DP, "meta.eval_inner_steps": 50}.items()]
    runtime = Runtime(load_config(config, sets))
    row = runtime.personalization("test")
    return {"final": {k: v for k, v in row.items() if isinstance(v, float)}}


def one_run(app: dict[str, Any], method: Any, seed: int, out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    """One method's run for one seed, or its figures from `out` when it finished before
    (`figures.json`): rerunning the script fills in only what is missing."""
    done = out / "figures.json"
    if done.is_file():
        return json.loads(done.read_text())
    overrides = {"run.seed": seed, **extra}
    start = time.process_time()
    if method == "local":
        summary = local_only(app["config"], overrides)
        out.mkdir(parents=True, exist_ok=True)
    else:
        overrides = {**overrides, "privacy.noise_seed": seed, **method}
        summary = fedmeta.run(app["config"], overrides=overrides, out=out, progress=False).summary
    summary["cpu_seconds"] = time.process_time() - start
    done.write_text(json.dumps(summary))
    return summary


def figures(summary: dict[str, Any], metrics: tuple[str, ...]) -> dict[str, float]:
    final, out = summary["final"], {}
    for m in metrics:
        for when in ("before", "after"):
            if f"{m}_{when}" in final:
                out[f"{m} {when}"] = final[f"{m}_{when}"]
    out["CPU s"] = summary["cpu_seconds"]
    if summary.get("epsilon") is not None:
        out["ε"] = summary["epsilon"]
    if "bytes_up_total" in summary:
        out["bytes/round"] = summary["bytes_up_total"] / summary["rounds"]
    if "membership_audit" in summary:
        out["audit AUC"] = summary["membership_audit"]["auc"]
    return out


def cell(values: list[float]) -> str:
    """mean ± sample sd (the mean alone when every seed gave the same value)."""
    mean = statistics.mean(values)
    shown = f"{mean:,.0f}" if abs(mean) >= 1000 else f"{mean:.4g}"
    if len(values) == 1 or len(set(values)) == 1:
        return shown
    return f"{shown} ± {statistics.stdev(values):.2g}"


def table(rows: dict[str, list[dict[str, Any]]], metrics: tuple[str, ...]) -> str:
    per = {name: [figures(s, metrics) for s in runs] for name, runs in rows.items()}
    columns = list(dict.fromkeys(k for runs in per.values() for f in runs for k in f))
    lines = ["| method | " + " | ".join(columns) + " | ledger |", "|---" * (len(columns) + 2) + "|"]
    for name, runs in per.items():
        cells = [cell([f[c] for f in runs if c in f]) if any(c in f for f in runs) else "" for c in columns]
        ledgers = [s["ledger"]["verified"] for s in rows[name] if "ledger" in s]
        ledger = "" if not ledgers else ("verified" if all(ledgers) else "FAILED")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {ledger} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("app", choices=[*APPS, "all"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("runs/applications"))
    ap.add_argument("--only", default="", help="run only the methods whose label contains this text")
    args = ap.parse_args()
    for name in APPS if args.app == "all" else [args.app]:
        app = APPS[name]
        rows: dict[str, list[dict[str, Any]]] = {}
        for label, method in app["methods"].items():
            if args.only not in label:
                continue
            rows[label] = [one_run(app, method, s, args.out / name / _slug(label) / f"seed-{s}", {})
                           for s in range(args.seeds)]
            print(f"{name}: {label} done", file=sys.stderr, flush=True)
        print(f"\n### {name} ({app['config']}, {args.seeds} seeds)\n")
        print(table(rows, app["metrics"]))
        sizes = app.get("support_sizes")
        if sizes and not args.only:
            by_size: dict[str, list[dict[str, Any]]] = {}
            for k in sizes["sizes"]:
                for label in sizes["methods"]:
                    extra = {"federated.partition.support_size": k}
                    by_size[f"{label}, K = {k}"] = [
                        one_run(app, app["methods"][label], s, args.out / name / f"{_slug(label)}-k{k}" / f"seed-{s}", extra)
                        for s in range(args.seeds)]
                    print(f"{name}: {label} K={k} done", file=sys.stderr, flush=True)
            print(f"\n### {name}: support size ({args.seeds} seeds)\n")
            print(table(by_size, app["metrics"]))


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label.lower()).strip("-")[:60]


if __name__ == "__main__":
    main()
