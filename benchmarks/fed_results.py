"""Measured results of fedmeta's federated runs, printed as the tables of docs/federated.md.

1. FedAvg vs FedProx on Synthetic(1,1) in the setting of Li et al. 2020 ("Federated
   Optimization in Heterogeneous Networks"): 30 clients, 10 per round, multinomial
   logistic regression, batch 10, SGD lr 0.01, μ = 1, 200 local steps, 200 rounds; then
   with 1000 local steps (more client drift), and with systems heterogeneity (FedAvg drops
   the clients that miss the deadline; FedProx keeps each client's partial work, 1 to 200
   steps). The training loss and accuracy are the paper's metric: the global model on
   every training example of every client, example-weighted, after each round.
2. Personalization of FedAvg, FedMeta-MAML (Chen et al. 2018) and Per-FedAvg (Fallah et
   al. 2020) on federated digits and federated Omniglot: accuracy on held-out clients'
   query sets before and after adapting the global model on their support sets, mean
   and 10th percentile over clients. Each is one `fedmeta run` of a file in `configs/`.
3. Communication: bytes sent up per round and final accuracy of FedMeta-MAML on digits
   with no compression, top-k (5%, error feedback) and stochastic int8.

Run from the repository root: `python benchmarks/fed_results.py --data-dir ../shared/data`
(about 15 minutes of CPU; `--only synthetic|personalization|compression` runs one part).
Every run uses `--threads` torch threads (default 1; on a shared 2-core machine more
threads per process spun and slowed small models down); CPU seconds are user + system
time of the run's process.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from fedmeta.config import load_config  # noqa: E402
from fedmeta.federated.runtime import Runtime  # noqa: E402
from fedmeta.meta.base import loss_for  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SYNTHETIC = {  # name -> (config, overrides)
    "FedAvg (μ=0)": ("configs/fed-synthetic-fedavg.toml", []),
    "FedProx (μ=1)": ("configs/fed-synthetic-fedprox.toml", []),
    "FedAvg, 1000 local steps": (
        "configs/fed-synthetic-fedavg.toml",
        ["federated.clients.local_steps=1000"],
    ),
    "FedProx (μ=1), 1000 local steps": (
        "configs/fed-synthetic-fedprox.toml",
        ["federated.clients.local_steps=1000"],
    ),
    "FedAvg, 50% stragglers dropped": (
        "configs/fed-synthetic-fedavg.toml",
        ["federated.clients.straggler_rate=0.5"],
    ),
    "FedAvg, 90% stragglers dropped": (
        "configs/fed-synthetic-fedavg.toml",
        ["federated.clients.straggler_rate=0.9", "federated.max_retries=20"],
    ),
    "FedProx (μ=0), partial work kept": (
        "configs/fed-synthetic-fedprox.toml",
        ["federated.clients.local_steps_min=1", "federated.clients.mu=0"],
    ),
    "FedProx (μ=1), partial work kept": (
        "configs/fed-synthetic-fedprox.toml",
        ["federated.clients.local_steps_min=1"],
    ),
}
PERSONALIZATION = {  # dataset -> method -> (run folder, config, overrides)
    "digits": {
        "FedAvg": ("digits-fedavg", "configs/fed-digits-fedavg.toml", []),
        "FedMeta-MAML": ("digits-fedmeta", "configs/fed-digits-fedmeta-maml.toml", []),
        "Per-FedAvg (FO)": ("digits-perfedavg", "configs/fed-digits-perfedavg.toml", []),
    },
    "omniglot": {
        "FedAvg": (
            "omniglot-fedavg",
            "configs/fed-omniglot-fedmeta.toml",
            ["federated.clients.procedure=sgd"],
        ),
        "FedMeta-MAML": ("omniglot-fedmeta", "configs/fed-omniglot-fedmeta.toml", []),
        "Per-FedAvg (FO)": (
            "omniglot-perfedavg",
            "configs/fed-omniglot-fedmeta.toml",
            ["federated.clients.procedure=perfedavg"],
        ),
    },
}
COMPRESSION = {  # the uncompressed run is FedMeta-MAML on digits above
    "none": ("digits-fedmeta", "configs/fed-digits-fedmeta-maml.toml", []),
    "top-k 5%": ("digits-topk", "configs/fed-digits-topk.toml", []),
    "int8": ("digits-int8", "configs/fed-digits-fedmeta-maml.toml", ["federated.clients.compression=int8"]),
}


def command(config: str, overrides: list[str], out: Path, data_dir: str | None) -> list[str]:
    cmd = ["fedmeta", "run", config, "--out", str(out), "--no-progress", *sets(overrides)]
    return cmd + (["--data-dir", data_dir] if data_dir else [])


def sets(overrides: list[str]) -> list[str]:
    return [part for item in overrides for part in ("--set", item)]


def run_cli(cmd: list[str], threads: int) -> tuple[Path, float, float]:
    """Run one `fedmeta run` command; its folder, CPU seconds and wall seconds."""
    out = Path(cmd[cmd.index("--out") + 1])
    if (out / "summary.json").exists():  # a finished run from an earlier invocation
        cpu = json.loads((out / "cpu.json").read_text())
        return out, cpu["cpu"], cpu["wall"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    exe = str(Path(sys.executable).with_name("fedmeta"))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run([exe, *cmd[1:]], check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    wall = time.perf_counter() - start
    (out / "cpu.json").write_text(json.dumps({"cpu": cpu, "wall": wall}))
    return out, cpu, wall


def show(cmd: list[str]) -> str:
    return " ".join(f"'{c}'" if " " in c else c for c in cmd)


# -- 1. Synthetic(1,1) ------------------------------------------------------------------
def training_loss(runtime: Runtime) -> tuple[float, float]:
    """The global model's loss and accuracy on all training examples of all clients."""
    loss_fn = loss_for("classification")
    total, correct, n = 0.0, 0.0, 0
    with torch.no_grad():
        for client in runtime.data.train:
            logits = functional_call(runtime.clients.model, runtime.params, (client.x,))  # (examples, classes)
            total += float(loss_fn(logits, client.y, reduction="sum"))
            correct += float((logits.argmax(1) == client.y).sum())
            n += client.n_examples
    return total / n, correct / n


def marks(rounds: int) -> list[int]:
    return sorted({0, rounds // 10, rounds // 4, rounds // 2, rounds})


def synthetic(out: Path) -> None:
    # with 90% stragglers whole rounds often come back empty and are retried: expected here
    logging.getLogger("fedmeta.federated").setLevel(logging.ERROR)
    rows = []
    curves = {}
    for name, (path, overrides) in SYNTHETIC.items():
        runtime = Runtime(load_config(ROOT / path, overrides))
        curve = [training_loss(runtime)]
        start = time.process_time()
        for _ in range(runtime.cfg.federated.rounds):
            runtime.run_round()
            curve.append(training_loss(runtime))
        cpu = time.process_time() - start
        curves[name] = curve
        loss = [c[0] for c in curve]
        last = loss[-50:]
        rows.append(
            [
                name,
                " ".join(f"{loss[r]:.3f}" for r in marks(len(loss) - 1)),
                f"{min(loss):.3f}",
                f"{max(last) - min(last):.3f}",
                f"{curve[-1][1]:.3f}",
                f"{cpu:.0f}",
            ]
        )
        print(f"  {name}: {path} {show(sets(overrides))}", flush=True)
    (out / "synthetic_curves.json").write_text(json.dumps(curves))
    rounds = " ".join(map(str, marks(len(loss) - 1)))
    print("\nSynthetic(1,1): training loss of the global model on all training data")
    print_table(
        [
            "method",
            f"loss at rounds {rounds}",
            "lowest",
            "range, last 50 rounds",
            "final train acc",
            "CPU s",
        ],
        rows,
    )


# -- 2. personalization ---------------------------------------------------------------------
def personalization(out: Path, data_dir: str | None, threads: int) -> None:
    for dataset, methods in PERSONALIZATION.items():
        rows = []
        for name, (folder, path, overrides) in methods.items():
            cmd = command(path, overrides, out / folder, data_dir)
            print(f"  {show(cmd)}", flush=True)
            run, cpu, wall = run_cli(cmd, threads)
            final = json.loads((run / "summary.json").read_text())["final"]
            rows.append(
                [
                    name,
                    f"{final['acc_before']:.3f}",
                    f"{final['acc_after']:.3f}",
                    f"{final['acc_before_p10']:.3f}",
                    f"{final['acc_after_p10']:.3f}",
                    final["eval_clients"],
                    f"{cpu:.0f}",
                    f"{wall:.0f}",
                ]
            )
        print(f"\nPersonalization on federated {dataset} (held-out clients' query accuracy)")
        print_table(
            [
                "method",
                "mean before",
                "mean after",
                "p10 before",
                "p10 after",
                "clients",
                "CPU s",
                "wall s",
            ],
            rows,
        )


# -- 3. compression ---------------------------------------------------------------------------
def compression(out: Path, data_dir: str | None, threads: int) -> None:
    rows = []
    for name, (folder, path, overrides) in COMPRESSION.items():
        cmd = command(path, overrides, out / folder, data_dir)
        print(f"  {show(cmd)}", flush=True)
        run, cpu, _ = run_cli(cmd, threads)
        summary = json.loads((run / "summary.json").read_text())
        metrics = map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
        ups = [
            r["bytes_up"]
            for r in metrics
            if r.get("split") in ("round", "test") and r.get("round", 0) > 0
        ]
        per_round = sum(ups) / len(ups)
        rows.append(
            [
                name,
                f"{per_round / 1e3:.0f}",
                f"{summary['final']['loss_before']:.4f}",
                f"{summary['final']['acc_before']:.3f}",
                f"{summary['final']['acc_after']:.3f}",
                f"{cpu:.0f}",
            ]
        )
    base = float(rows[0][1])
    for row in rows:
        row.insert(2, f"{base / float(row[1]):.1f}x")
    print("\nCompression of FedMeta-MAML updates on digits (20 clients per round)")
    print_table(
        [
            "compression",
            "kB up per round",
            "smaller by",
            "loss before",
            "acc before",
            "acc after",
            "CPU s",
        ],
        rows,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/fed-results", help="folder for the run folders")
    ap.add_argument("--data-dir", default=None, help="datasets folder (Omniglot)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per run")
    ap.add_argument("--only", choices=("synthetic", "personalization", "compression"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    out = (ROOT / args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if args.only in (None, "synthetic"):
        synthetic(out)
    if args.only in (None, "personalization"):
        personalization(out, args.data_dir, args.threads)
    if args.only in (None, "compression"):
        compression(out, args.data_dir, args.threads)


if __name__ == "__main__":
    main()
