"""Federated simulation throughput of fedmeta next to Flower's simulation engine.

The workload is the same on both sides: federated MAML (FedMeta, Chen et al. 2018) on
the federated sinusoid (each client a region of amplitude x phase), MLP 1-40-40-1,
K = 10 support and 10 query points, inner step α = 0.01, and per client one local
meta-step θ ← θ − β∇meta over `TASKS` tasks drawn from its own region; the server takes
the example-weighted mean (FedAvg).

- fedmeta: `Runtime(cfg).run_round()` with 1000 clients, 100 or 1000 sampled per
  round, clients batched with `vmap` (chunks of `client_chunk`) and with a loop; and
  10,000 clients all sampled, with vmap, whose memory the chunks bound.
- the meta core alone: the same clients' local meta-steps, vmapped in the same chunks on
  episodes drawn beforehand, timed alternately with the vmap rounds in their process, so
  that "time vs core" (what the federated layer adds: sampling, encoding, checks,
  commitments, aggregation) is a ratio under one load.
- Flower (1.42 here): `flwr.simulation.run_simulation` (Ray backend) with a `ServerApp` running
  Flower's own message-API `FedAvg` and a `ClientApp` whose train handler does the same
  meta-step with plain `torch.autograd` (`create_graph=True`), on episodes from the same
  fedmeta client regions; one virtual SuperNode per client of a round, every node sampled
  each round, one Ray actor per core.

Before timing, the plain-autograd client update is checked against fedmeta's on the
same episodes. Each case runs in its own child process; its peak memory is the largest
sampled sum of resident memory over the child and all its descendants (Ray's raylet,
GCS and worker processes included), read from /proc. Round times exclude start-up: the
first round (Ray actors importing torch, vmap warm-up) is run and not counted.

Run from the repository root: `python benchmarks/fed_speed.py` (about 4 minutes; needs
`pip install "flwr[simulation]"` for Ray). Both sides use one torch thread per process:
Ray sets OMP_NUM_THREADS of a worker to the CPUs assigned to it (1 here), fedmeta uses
`--threads` (default 1), because on a shared 2-core machine two spinning intra-op
threads per process made small MLP steps an order of magnitude slower.

`--device cuda` runs fedmeta's clients on the GPU (`run.device`; the server stays on the
CPU) and adds each case's peak GPU memory; Flower's clients stay on the CPU.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.func import functional_call, vmap
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from fedmeta.config import Config  # noqa: E402
from fedmeta.data.base import TaskBatch  # noqa: E402
from fedmeta.data.federated import FederatedData  # noqa: E402
from fedmeta.device import batch_to, resolve, to_device  # noqa: E402
from fedmeta.federated.client import local_update  # noqa: E402
from fedmeta.federated.runtime import ClientSide, Runtime  # noqa: E402

N_CLIENTS = 1000
TASKS = 5
ALPHA, BETA = 0.01, 0.001
SIZES = (100, 1000, 10_000)  # clients per round; 10,000 runs fedmeta (vmap) only


def config(per_round: int, batching: str = "vmap", n_clients: int = N_CLIENTS, device: str = "cpu") -> Config:
    return Config.model_validate(
        {
            "run": {"seed": 0, "device": device},
            "data": {"name": "sinusoid", "k_shot": 10, "k_query": 10},
            "model": {"name": "mlp", "hidden": [40, 40]},
            "meta": {"algorithm": "maml", "inner_steps": 1, "inner_lr": ALPHA},
            "federated": {
                "n_clients": n_clients,
                "held_out_clients": 0,
                "clients_per_round": per_round,
                "clients": {"procedure": "fedmeta", "local_steps": 1, "tasks_per_step": TASKS, "lr": BETA,
                            "batching": batching, "chunk": 1000},
                "server": {"strategy": "fedavg"},
            },
        }
    )


def plain_maml_update(
    model: torch.nn.Module, params: dict[str, torch.Tensor], batch: TaskBatch
) -> dict[str, torch.Tensor]:
    """One second-order MAML meta-step written with torch.autograd alone; returns θ_local."""
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    total = {k: torch.zeros_like(v) for k, v in params.items()}
    for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):  # one task: (K, 1) each
        support = F.mse_loss(functional_call(model, leaves, (xs,)), ys)
        g = torch.autograd.grad(support, list(leaves.values()), create_graph=True)
        fast = {k: p - ALPHA * gi for (k, p), gi in zip(leaves.items(), g)}
        query = F.mse_loss(functional_call(model, fast, (xq,)), yq)
        for k, gq in zip(leaves, torch.autograd.grad(query, list(leaves.values()))):
            total[k] += gq
    n = batch.xs.shape[0]
    return {k: (p - BETA * total[k] / n).detach() for k, p in params.items()}


def check_equivalence(device: str) -> float:
    """Largest |Δ_plain − Δ_fedmeta| of one client's update on the same episodes."""
    runtime = Runtime(config(10, n_clients=10, device=device))
    training = runtime.clients.training
    params = to_device(runtime.params, training.device)
    batch, steps = training.episodes([0], runtime.server.generator(1))[0]
    batch = batch_to(batch, training.device)
    ours = local_update(training.procedure, params, batch, torch.tensor(steps, device=training.device))
    one = TaskBatch(batch.xs[0], batch.ys[0], batch.xq[0], batch.yq[0])  # (tasks, K, 1)
    plain = plain_maml_update(runtime.clients.model, params, one)
    return max(float((plain[k] - params[k] - ours[k]).abs().max()) for k in ours)


@functools.cache
def worker_state(n_clients: int) -> tuple[FederatedData, torch.nn.Module]:
    """The federated sinusoid clients and the network, built once per process."""
    clients = ClientSide.from_config(config(n_clients, n_clients=n_clients))
    return clients.data, clients.model


# -- cases, each run in a child process --------------------------------------------------
def core_step(runtime: Runtime, per_round: int) -> Callable[[], None]:
    """The bare meta core on a round's work: the sampled clients' local meta-steps, vmapped
    in chunks of `federated.clients.chunk` as a round runs them, on episodes drawn
    beforehand, and nothing else (no sampling, encoding, checks, signing or aggregation)."""
    training = runtime.clients.training
    params = to_device(runtime.params, training.device)
    ids = list(range(per_round))
    eps, steps = training.episodes(ids, runtime.server.generator(1)).batch(ids)
    eps, steps = batch_to(eps, training.device), torch.tensor(steps, device=training.device)

    def one(xs, ys, xq, yq, n):
        return local_update(training.procedure, params, TaskBatch(xs, ys, xq, yq), n)

    def step() -> None:
        for i in range(0, per_round, training.chunk):
            part = slice(i, i + training.chunk)
            vmap(one)(eps.xs[part], eps.ys[part], eps.xq[part], eps.yq[part], steps[part])
        if training.device.type == "cuda":
            torch.cuda.synchronize()

    return step


def fedmeta_case(per_round: int, batching: str, rounds: int, device: str) -> dict:
    """Median seconds of a whole round and, with vmap, of the bare meta core on the same
    work, the two timed alternately in this one process so that both see the same load."""
    runtime = Runtime(config(per_round, batching, n_clients=max(N_CLIENTS, per_round), device=device))
    core = core_step(runtime, per_round) if batching == "vmap" else None
    runtime.run_round()  # warm-up, not counted
    if core:
        core()
    times, core_times = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        runtime.run_round()  # ends with the updates on the CPU: the GPU's work is done
        times.append(time.perf_counter() - t)
        if core:
            t = time.perf_counter()
            core()
            core_times.append(time.perf_counter() - t)
    out = {"round_seconds": statistics.median(times), "rounds": rounds}
    if core:
        out["core_seconds"] = statistics.median(core_times)
    if runtime.clients.training.device.type == "cuda":
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def flower_case(per_round: int, rounds: int) -> dict:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    client_app = ClientApp()
    here = str(Path(__file__).resolve().parent)

    @client_app.train()
    def train(msg: Message, context: Context) -> Message:
        # Ray ships this handler to its workers by value with every message; the client
        # regions and the network are built once per worker, in this module imported there.
        if here not in sys.path:
            sys.path.insert(0, here)
        import fed_speed

        data, model = fed_speed.worker_state(per_round)
        cid = int(context.node_config["partition-id"])
        params = dict(msg.content["arrays"].to_torch_state_dict())
        gen = torch.Generator().manual_seed(
            int(msg.content["config"]["server-round"]) * 1_000_003 + cid
        )
        client = data.train[cid]
        new = fed_speed.plain_maml_update(model, params, client.sample(TASKS, gen))
        reply = RecordDict(
            {
                "arrays": ArrayRecord(new),
                "metrics": MetricRecord({"num-examples": client.n_examples}),
            }
        )
        return Message(reply, reply_to=msg)

    times: list[float] = []

    class TimedFedAvg(FedAvg):
        def configure_train(self, server_round, arrays, config, grid):
            self._start = time.perf_counter()
            return super().configure_train(server_round, arrays, config, grid)

        def aggregate_train(self, server_round, replies):
            out = super().aggregate_train(server_round, replies)
            times.append(time.perf_counter() - self._start)
            return out

    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        params = Runtime(config(per_round, n_clients=per_round)).params
        strategy = TimedFedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=per_round,
            min_available_nodes=per_round,
        )
        strategy.start(grid=grid, initial_arrays=ArrayRecord(params), num_rounds=rounds + 1)

    run_simulation(
        server_app,
        client_app,
        num_supernodes=per_round,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}},
    )
    if len(times) != rounds + 1:
        raise RuntimeError(f"Flower finished {len(times)} of {rounds + 1} rounds")
    return {
        "round_seconds": statistics.median(times[1:]),
        "rounds": rounds,
        "first_round_seconds": times[0],
    }


# -- memory of a process tree -------------------------------------------------------------
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Resident bytes of `root` and all its descendants, from /proc."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    members, frontier = {root}, [root]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p and c not in members]
        members.update(kids)
        frontier += kids
    total = 0
    for pid in members:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


def run_child(args: list[str], timeout: float) -> dict:
    """Run this script on one case; its JSON result plus the peak tree memory."""
    proc = subprocess.Popen(
        [sys.executable, __file__, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return {"error": f"timed out after {timeout:.0f} s"}
    finally:
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        return {"error": f"exit status {proc.returncode}"}
    result = json.loads(out.strip().splitlines()[-1])
    result["peak_mb"] = peak[0] / 2**20
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--per-round", type=int, help=argparse.SUPPRESS)
    ap.add_argument(
        "--rounds", type=int, default=5, help="timed rounds per case (after one warm-up round)"
    )
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the fedmeta process")
    ap.add_argument("--skip-flower", action="store_true")
    ap.add_argument("--sizes", default=",".join(map(str, SIZES)), help="clients per round, comma-separated")
    ap.add_argument("--device", default="cpu", help="fedmeta's clients: cpu, cuda, cuda:N or mps (as run.device)")
    args = ap.parse_args()
    resolve(args.device)  # an absent device is refused before any case runs
    torch.set_num_threads(args.threads)
    if args.case:  # child process: one case, one JSON line
        if args.case == "flower":
            print(json.dumps(flower_case(args.per_round, args.rounds)))
        else:
            print(json.dumps(fedmeta_case(args.per_round, args.case, args.rounds, args.device)))
        return

    print(
        f"plain-autograd client update vs fedmeta's on {args.device}, same episodes: "
        f"max |difference| = {check_equivalence(args.device):.2e}"
    )
    results: dict[tuple[str, int], dict] = {}
    for n in map(int, args.sizes.split(",")):
        cases = ("vmap",) + (() if n > 1000 else ("loop",) + (() if args.skip_flower else ("flower",)))
        for case in cases:
            rounds = 1 if case != "vmap" and n == 1000 else args.rounds
            extra = [] if case == "flower" else ["--threads", str(args.threads), "--device", args.device]
            results[case, n] = r = run_child(
                ["--case", case, "--per-round", str(n), "--rounds", str(rounds), *extra],
                timeout=600,
            )
            print(f"  {case} at {n} clients/round: {r}", flush=True)

    names = {
        "vmap": "fedmeta (vmap)",
        "loop": "fedmeta (loop)",
        "flower": "Flower run_simulation (Ray)",
    }
    rows = []
    for (case, n), r in results.items():
        if "core_seconds" in r:
            rows.append(["meta core alone (vmap), same process", n, f"{1 / r['core_seconds']:.3g}",
                         f"{n / r['core_seconds']:.0f}", "", "1.00x", ""])
        if "error" in r:
            rows.append([names[case], n, r["error"], "", "", "", ""])
            continue
        flower = results.get(("flower", n), {})
        ratio = (
            f"{flower['round_seconds'] / r['round_seconds']:.1f}x"
            if "round_seconds" in flower
            else "n/a"
        )
        rows.append(
            [
                names[case],
                n,
                f"{1 / r['round_seconds']:.3g}",
                f"{n / r['round_seconds']:.0f}",
                f"{r['peak_mb']:.0f}",
                f"{r['round_seconds'] / results['vmap', n]['core_seconds']:.2f}x" if "core_seconds" in results.get(("vmap", n), {}) else "n/a",
                ratio,
            ]
        )
    print()
    print_table(
        [
            "runtime",
            "clients/round",
            "rounds/s",
            "client updates/s",
            "peak memory (MB)",
            "time vs core",
            "vs Flower",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
