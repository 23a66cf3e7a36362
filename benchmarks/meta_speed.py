"""Meta-training throughput of fedmeta's MAML (second order, Finn et al. 2017) next to its peers.

One meta-step = the meta-gradient of a meta-batch of tasks plus one Adam step on the
initialisation. Each case times, back to back in the same process and on the same episodes:

- fedmeta: `MAML.meta_gradient` with `batching="vmap"` and `"loop"`, and for Conv4 the loop
  with `compile_query=True` (its one-off compile is left out of the timing);
- plain: a per-task loop over `torch.autograd.grad(..., create_graph=True)`, the way
  learn2learn and most MAML code write it (the reference for the speed targets);
- torch.func: `vmap(grad_and_value(per-task query loss))` over the tasks, the torch.func
  MAML recipe;
- higher 0.2.1: `higher.innerloop_ctx` with a differentiable SGD inner optimizer;
- torchopt 0.7: `torchopt.MetaSGD` with `extract_state_dict`/`recover_state_dict` per task.

Before timing, every method's gradient of the first step is compared with the plain loop's.
For Conv4 the FLOPs of one meta-step are counted with `torch.utils.flop_counter` (forward,
backward and double backward) and set against a measured 2048x2048 fp32 matmul rate.

Run from the repository root: `python benchmarks/meta_speed.py --data-dir ../shared/data`;
`--device cuda` runs every method on the GPU (models and episodes moved there; each timed
call waits for the GPU's queued work), the matmul peak measured there too.
Timings are medians of interleaved repeats; on a shared machine the ratios, measured back
to back in one run, are the figures to quote, not the absolute rates.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import higher
import torch
import torchopt
from torch import Tensor, nn
from torch.func import functional_call, grad, grad_and_value, vmap
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import interleaved_medians, print_table  # noqa: E402
from fedmeta.config import DataConfig  # noqa: E402
from fedmeta.data import make_tasks  # noqa: E402
from fedmeta.data.base import Kind, TaskBatch  # noqa: E402
from fedmeta.data.sinusoid import Sinusoid  # noqa: E402
from fedmeta.device import batch_to, resolve  # noqa: E402
from fedmeta.meta import MAML  # noqa: E402
from fedmeta.meta.base import loss_for  # noqa: E402
from fedmeta.models import MLP, Conv4, parameters_of  # noqa: E402

OUTER_LR = 1e-3
PEERS = ("plain", "torch.func", "higher", "torchopt")
COMPILED = "fedmeta loop+compile"
METHODS = ("fedmeta vmap", "fedmeta loop", COMPILED, *PEERS)


@dataclass
class Method:
    """One implementation of a MAML meta-step; `grads()` reads the last step's meta-gradient."""

    step: Callable[[TaskBatch], None]
    grads: Callable[[], list[Tensor]]


def fedmeta_method(
    model: nn.Module, kind: Kind, alpha: float, batching: str, compile_query: bool = False
) -> Method:
    learner = MAML(model, kind, inner_lr=alpha, batching=batching, compile_query=compile_query)
    meta = learner.init(parameters_of(model))
    opt = torch.optim.Adam(meta.values(), lr=OUTER_LR)

    def step(batch: TaskBatch) -> None:
        _, grads = learner.meta_gradient(meta, batch)
        for k, p in meta.items():
            p.grad = grads[k]
        opt.step()

    return Method(step, lambda: [p.grad for p in meta.values()])


def plain_method(model: nn.Module, kind: Kind, alpha: float) -> Method:
    """Per-task second-order MAML with nothing but torch.autograd."""
    params = {k: v.requires_grad_() for k, v in parameters_of(model).items()}
    opt = torch.optim.Adam(params.values(), lr=OUTER_LR)
    loss = loss_for(kind)

    def step(batch: TaskBatch) -> None:
        opt.zero_grad()
        for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
            inner = loss(functional_call(model, params, (xs,)), ys)
            grads = torch.autograd.grad(inner, list(params.values()), create_graph=True)
            fast = {k: p - alpha * g for (k, p), g in zip(params.items(), grads)}
            (loss(functional_call(model, fast, (xq,)), yq) / batch.n_tasks).backward()
        opt.step()

    return Method(step, lambda: [p.grad for p in params.values()])


def torch_func_method(model: nn.Module, kind: Kind, alpha: float) -> Method:
    """Per-task second-order MAML gradients with torch.func, vmapped over the tasks."""
    params = parameters_of(model)
    opt = torch.optim.Adam(params.values(), lr=OUTER_LR)
    loss = loss_for(kind)

    def query_loss(p: dict[str, Tensor], xs: Tensor, ys: Tensor, xq: Tensor, yq: Tensor) -> Tensor:
        g = grad(lambda p: loss(functional_call(model, p, (xs,)), ys))(p)
        fast = {k: v - alpha * g[k] for k, v in p.items()}
        return loss(functional_call(model, fast, (xq,)), yq)

    per_task = vmap(grad_and_value(query_loss), in_dims=(None, 0, 0, 0, 0))

    def step(batch: TaskBatch) -> None:
        grads, _ = per_task(params, batch.xs, batch.ys, batch.xq, batch.yq)
        for k, p in params.items():
            p.grad = grads[k].mean(0)
        opt.step()

    return Method(step, lambda: [p.grad for p in params.values()])


def higher_method(model: nn.Module, kind: Kind, alpha: float) -> Method:
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    inner_opt = torch.optim.SGD(model.parameters(), lr=alpha)
    loss = loss_for(kind)

    def step(batch: TaskBatch) -> None:
        opt.zero_grad()
        for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False) as (
                fmodel,
                diffopt,
            ):
                diffopt.step(loss(fmodel(xs), ys))
                (loss(fmodel(xq), yq) / batch.n_tasks).backward()
        opt.step()

    return Method(step, lambda: [p.grad for p in model.parameters()])


def torchopt_method(model: nn.Module, kind: Kind, alpha: float) -> Method:
    model = copy.deepcopy(model)
    opt = torch.optim.Adam(model.parameters(), lr=OUTER_LR)
    inner_opt = torchopt.MetaSGD(model, lr=alpha)
    net_state = torchopt.extract_state_dict(model)
    inner_state = torchopt.extract_state_dict(inner_opt)
    loss = loss_for(kind)

    def step(batch: TaskBatch) -> None:
        opt.zero_grad()
        for xs, ys, xq, yq in zip(batch.xs, batch.ys, batch.xq, batch.yq):
            inner_opt.step(loss(model(xs), ys))
            (loss(model(xq), yq) / batch.n_tasks).backward()
            torchopt.recover_state_dict(model, net_state)
            torchopt.recover_state_dict(inner_opt, inner_state)
        opt.step()

    return Method(step, lambda: [p.grad for p in model.parameters()])


def methods_for(model: nn.Module, kind: Kind, alpha: float, compiled: bool) -> dict[str, Method]:
    """All implementations, each from the same initial weights."""
    methods = {
        "fedmeta vmap": fedmeta_method(model, kind, alpha, "vmap"),
        "fedmeta loop": fedmeta_method(model, kind, alpha, "loop"),
        COMPILED: fedmeta_method(model, kind, alpha, "loop", compile_query=True)
        if compiled
        else None,
        "plain": plain_method(model, kind, alpha),
        "torch.func": torch_func_method(model, kind, alpha),
        "higher": higher_method(model, kind, alpha),
        "torchopt": torchopt_method(model, kind, alpha),
    }
    return {name: methods[name] for name in METHODS if methods[name] is not None}


def per_second(rate: float) -> str:
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def check_gradients(methods: dict[str, Method], batch: TaskBatch) -> dict[str, float]:
    """Run one step of each (also the warm-up) and return each one's largest gradient
    difference from the plain loop, relative to the largest plain-loop gradient entry."""
    for m in methods.values():
        m.step(batch)
    reference = methods["plain"].grads()
    scale = max(float(g.abs().max()) for g in reference)
    return {
        name: max(float((a - b).abs().max()) for a, b in zip(m.grads(), reference)) / scale
        for name, m in methods.items()
    }


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (nothing to wait for on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Measured fp32 GFLOP/s of an n x n matmul (2 n^3 FLOPs) on `device`, median of `repeats`."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times) / 1e9


def flops_of(step: Callable[[TaskBatch], None], batch: TaskBatch) -> int:
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()


@dataclass
class Case:
    name: str
    model: nn.Module
    kind: Kind
    alpha: float
    batch: TaskBatch
    calls: int  # meta-steps per timing sample
    repeats: int  # timing samples per method (median reported)
    target: float  # wanted ratio of the best fedmeta batching over the plain loop


def run_case(case: Case, device: torch.device) -> tuple[dict[str, float], dict[str, float], dict[str, Method]]:
    methods = methods_for(case.model, case.kind, case.alpha, compiled=case.kind == "classification")
    errors = check_gradients(methods, case.batch)
    seconds = interleaved_medians(
        {name: (lambda m=m: (m.step(case.batch), synchronize(device))) for name, m in methods.items()},
        case.calls,
        case.repeats,
    )
    return seconds, errors, methods


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding omniglot/")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--conv-tasks", type=int, default=8, help="Conv4 meta-batch")
    parser.add_argument("--case", choices=("all", "sinusoid", "conv4"), default="all")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (as run.device)")
    args = parser.parse_args(argv)
    device = resolve(args.device)
    torch.set_num_threads(args.threads)
    load_at_start = os.getloadavg()[0]
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    cases = []
    if args.case in ("all", "sinusoid"):
        sinusoid = Sinusoid(k_shot=10, k_query=10)
        cases += [
            Case(
                "sinusoid MLP, 25 tasks",
                MLP(1, 1),
                "regression",
                0.01,
                sinusoid.sample(25, gen),
                calls=20,
                repeats=7,
                target=5.0,
            ),
            Case(
                "sinusoid MLP, 1000 tasks",
                MLP(1, 1),
                "regression",
                0.01,
                sinusoid.sample(1000, gen),
                calls=1,
                repeats=5,
                target=30.0,
            ),
        ]
    if args.case in ("all", "conv4"):
        omniglot = make_tasks(
            DataConfig(name="omniglot", data_dir=args.data_dir, n_way=5, k_shot=1, k_query=15),
            "train",
        )
        cases.append(
            Case(
                f"Conv4-64 Omniglot 5w1s q15, {args.conv_tasks} tasks",
                Conv4(1, 5),
                "classification",
                0.4,
                omniglot.sample(args.conv_tasks, gen),
                calls=1,
                repeats=3,
                target=1.0,
            )
        )

    cases = [dataclasses.replace(c, model=c.model.to(device), batch=batch_to(c.batch, device)) for c in cases]
    rows, summary, gradient_rows = [], [], []
    conv: tuple[Case, dict[str, float], dict[str, Method]] | None = None
    for case in cases:
        start = time.perf_counter()
        seconds, errors, methods = run_case(case, device)
        rate = {name: case.batch.n_tasks / s for name, s in seconds.items()}
        ours_all = [name for name in rate if name.startswith("fedmeta")]
        for ours in ours_all:
            for peer in PEERS:
                rows.append(
                    [
                        case.name,
                        ours,
                        per_second(rate[ours]),
                        peer,
                        per_second(rate[peer]),
                        f"{rate[ours] / rate[peer]:.2f}x",
                    ]
                )
        best = max(ours_all, key=rate.get)
        ratio = rate[best] / rate["plain"]
        default = "fedmeta " + MAML(case.model, case.kind).batching  # what batching="auto" picks
        summary.append(
            [
                case.name,
                best,
                f"{ratio:.2f}x",
                default,
                f"{rate[default] / rate['plain']:.2f}x",
                f">= {case.target:g}x",
                "yes" if ratio >= case.target else "NO",
            ]
        )
        gradient_rows.append(
            [case.name] + [f"{errors[n]:.1e}" if n in errors else "-" for n in METHODS]
        )
        print(f"[{case.name}: {time.perf_counter() - start:.0f} s]", file=sys.stderr)
        if case.kind == "classification":
            conv = (case, seconds, methods)

    print(
        "\nMeta-training throughput (tasks/s; median of interleaved repeats, "
        f"{device}, {args.threads} threads; 1-min load average {load_at_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end)\n"
    )
    print_table(["case", "fedmeta", "tasks/s", "peer", "tasks/s", "ratio"], rows)
    print("\nBest fedmeta batching against the plain autograd loop\n")
    print_table(
        [
            "case",
            "best",
            "ratio vs plain",
            "default (auto)",
            "ratio vs plain",
            "target",
            "best meets it",
        ],
        summary,
    )
    print("\nFirst-step meta-gradient: max |difference from plain loop| / max |plain gradient|\n")
    print_table(["case", *METHODS], gradient_rows)
    if conv is not None:
        report_flops(*conv, device)


def report_flops(case: Case, seconds: dict[str, float], methods: dict[str, Method], device: torch.device) -> None:
    """Achieved GFLOP/s of each method on the Conv4 case against the matmul peak."""
    peak = matmul_gflops(device)
    flops = {
        name: flops_of(methods[name].step, case.batch) for name in ("fedmeta loop", "fedmeta vmap")
    }
    work = flops["fedmeta loop"]
    print(
        f"\nConv4 meta-step FLOPs (FlopCounterMode, fwd + bwd + double bwd): "
        f"{work / 1e9:.1f} GFLOP for {case.batch.n_tasks} tasks "
        f"({work / case.batch.n_tasks / 1e9:.2f} GFLOP/task); vmap's own count "
        f"{flops['fedmeta vmap'] / 1e9:.1f} GFLOP. fp32 matmul 2048^2 peak: {peak:.1f} GFLOP/s\n"
    )
    print_table(
        ["method", "s/meta-step", "GFLOP/s", "% of matmul peak"],
        [
            [name, f"{s:.2f}", f"{work / s / 1e9:.1f}", f"{100 * work / s / 1e9 / peak:.0f}%"]
            for name, s in seconds.items()
        ],
    )


if __name__ == "__main__":
    main()
