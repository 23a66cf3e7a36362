"""Deployed round time on loopback: fedmeta's supernodes (ClientApp kept loaded, prompt
polls) vs Flower's own supernodes (a ClientApp process per message) vs the in-process run,
for each secure aggregation setting, all in one run.

Config: the test config of `tests/deploy` (synthetic data, 3 clients, 2 per round, MLP
16-16 with 1,418 parameters, FOMAML, example-level DP), three supernodes and a superlink
on this machine. A round's time is the difference of `summary.json`'s seconds between a
6-round and a 2-round run, over 4 (start-up and the first evaluation cancel out); each
exchange's seconds come from `metrics.jsonl` (`secagg_exchange_seconds`, `he_exchange_seconds`).

    .venv/bin/python benchmarks/deploy_rounds.py                 # all three settings, both supernodes
    .venv/bin/python benchmarks/deploy_rounds.py --schemes off --no-stock
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import print_table  # noqa: E402
from fedmeta.config import Config  # noqa: E402
from fedmeta.deploy.launch import run_local  # noqa: E402
from fedmeta.rundir import RunDir  # noqa: E402

DP = {"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5, "clip_norm": 1.0, "delta": 1e-5}
SCHEMES = {  # privacy settings, the per-exchange metric
    "off": (DP, None),
    "secagg+": ({**DP, "secure_aggregation": "secagg+", "secagg_clip": 2.0}, "secagg_exchange_seconds"),
    "ckks": ({"dp": "central", "noise_multiplier": 0.5, "clip_norm": 0.5, "secure_aggregation": "ckks"},
             "he_exchange_seconds"),
}


def make_config(privacy: dict, rounds: int) -> Config:
    """The config of `tests/deploy`."""
    return Config.model_validate({
        "run": {"seed": 3}, "data": {"name": "synthetic", "k_shot": 5, "k_query": 5},
        "model": {"name": "mlp", "hidden": [16, 16]},
        "meta": {"algorithm": "fomaml", "inner_steps": 1, "inner_lr": 0.05, "eval_inner_steps": 2},
        "federated": {"rounds": rounds, "n_clients": 3, "held_out_clients": 2, "clients_per_round": 2, "eval_every": 1,
                      "clients": {"local_steps": 2, "tasks_per_step": 2, "lr": 0.05}},
        "privacy": privacy})


def deployed(cfg, folder: Path, stock: bool) -> tuple[float, list[float]]:
    """`summary.json`'s seconds of a loopback deployment, and its exchanges' seconds."""
    run = RunDir.create(folder / "run", cfg)
    run.close()  # the ServerApp process is the folder's writer
    run_local(run.path / "config.toml", run.path, 3, 3, workdir=folder / "work", timeout=1800, stock_supernodes=stock)
    return seconds(run.path)


def in_process(cfg, folder: Path) -> tuple[float, list[float]]:
    """`fedmeta run` in its own process, as a user runs it (the first run in a process
    pays one-off warm-ups the deployed ServerApp pays in its own)."""
    folder.mkdir(parents=True)
    (folder / "cfg.toml").write_text(cfg.to_toml())
    subprocess.run([sys.executable, "-m", "fedmeta", "run", str(folder / "cfg.toml"), "--out", str(folder / "run"),
                    "--no-progress"], check=True, stdout=subprocess.DEVNULL)
    return seconds(folder / "run")


def seconds(run: Path) -> tuple[float, list[float]]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    exchanges = [s for r in rows if r["split"] == "test" and r["round"] > 0
                 for k in ("secagg_exchange_seconds", "he_exchange_seconds") for s in r.get(k) or []]
    return json.loads((run / "summary.json").read_text())["seconds"], exchanges


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    parser.add_argument("--no-stock", action="store_true", help="Skip Flower's own supernodes (slow).")
    parser.add_argument("--rounds", nargs=2, type=int, default=[2, 6], help="The two run lengths.")
    args = parser.parse_args()
    logging.getLogger("absl").setLevel(logging.ERROR)
    os.environ.setdefault("FEDMETA_HOME", tempfile.mkdtemp(prefix="fedmeta-home-"))
    runtimes = {"fedmeta supernodes": lambda c, f: deployed(c, f, False)}
    if not args.no_stock:
        runtimes["Flower's supernodes"] = lambda c, f: deployed(c, f, True)
    runtimes["in-process"] = in_process
    per_round: dict[tuple[str, str], float] = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for scheme in args.schemes:
            privacy, _ = SCHEMES[scheme]
            for name, run in runtimes.items():
                took, exchanges = {}, []
                for rounds in args.rounds:
                    folder = Path(tmp) / f"{scheme}-{name.split()[0]}-{rounds}"
                    start = time.perf_counter()
                    took[rounds], exchanges = run(make_config(privacy=privacy, rounds=rounds), folder)
                    print(f"{scheme:8} {name:20} {rounds} rounds: {took[rounds]:.2f} s run, "
                          f"{time.perf_counter() - start:.1f} s wall", file=sys.stderr)
                short, long = args.rounds
                per_round[scheme, name] = (took[long] - took[short]) / (long - short)
                median = f"{statistics.median(exchanges):.3f}" if exchanges else "-"
                rows.append([scheme, name, f"{took[short]:.2f}", f"{took[long]:.2f}", f"{per_round[scheme, name]:.3f}", "",
                             median])
    for row in rows:  # ratios to the in-process round, now that every one is known
        row[5] = f"{per_round[row[0], row[1]] / per_round[row[0], 'in-process']:.1f}x"
    print_table(["secure_aggregation", "runtime", f"{args.rounds[0]} rounds: s", f"{args.rounds[1]} rounds: s", "s / round", "vs in-process",
                 "median s / exchange"], rows)
    if "off" in args.schemes:
        for name in runtimes:
            ratios = [f"{s} {per_round[s, name] / per_round['off', name]:.2f}x" for s in args.schemes if s != "off"]
            print(f"{name}: round vs a plain round: " + ", ".join(ratios))
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
