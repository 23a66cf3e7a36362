"""Published meta-learning results reproduced on a CPU time budget.

Cases (each trains the learner its config describes, for as long as its share of the budget
allows, then scores held-out tasks):

- sinusoid: MAML on K=10 sinusoid regression (Finn et al. 2017, section 5.1 and Figure 2),
  query MSE on 600 held-out tasks after 1 and 10 inner steps, mean with a 95% interval.
- omniglot-5w: MAML, 5-way 1-shot Omniglot on held-out alphabets (Finn et al. 2017, Table 1).
- omniglot-20w: MAML, 20-way 1-shot Omniglot on held-out alphabets, and the error rate on the
  20 within-alphabet one-shot runs of Lake, Salakhutdinov & Tenenbaum (Science 2015).

Training reuses `fedmeta.train.build` (learner, model, task distributions from the TOML
config) and the same meta-gradient and outer optimizer as `fedmeta run`; only the stopping
rule differs (wall-clock budget instead of an iteration count).

Run from the repository root, e.g.
`python benchmarks/meta_results.py --budget-minutes 42 --data-dir ../shared/data`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from fedmeta.config import Config, load_config  # noqa: E402
from fedmeta.data.base import TaskBatch  # noqa: E402
from fedmeta.data.omniglot import lake_runs_error  # noqa: E402
from fedmeta.meta import MetaLearner, Params  # noqa: E402
from fedmeta.train import build, eval_batch, outer_optimizer  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Case:
    config: str
    share: float  # fraction of the budget spent training this case
    max_iterations: int  # the paper's iteration count: never train longer than it did
    eval_tasks: int
    published: dict[str, str]


CASES = {
    "sinusoid": Case(
        "configs/sinusoid-maml.toml",
        share=0.16,
        max_iterations=70_000,
        eval_tasks=600,
        published={
            "MSE after 1 step": "Finn et al. 2017 Fig. 2 (K=10): MAML far below the pretrained "
            "baseline after one step, improving further with more steps (figure, no table)",
            "MSE after 10 steps": "Li et al. 2017 (Meta-SGD) Table 1, MAML K=10: not verified",
        },
    ),
    "omniglot-5w": Case(
        "configs/omniglot-maml-5w1s.toml",
        share=0.42,
        max_iterations=60_000,
        eval_tasks=1000,
        published={"accuracy": "98.7 ± 0.4% (Finn et al. 2017 Table 1, full Omniglot)"},
    ),
    "omniglot-20w": Case(
        "configs/omniglot-maml-20w1s.toml",
        share=0.42,
        max_iterations=60_000,
        eval_tasks=500,
        published={
            "accuracy": "95.8 ± 0.3% (Finn et al. 2017 Table 1, full Omniglot)",
            "Lake 20-run error": "people 4.5%, BPL 3.3%, Siamese convnet 8.0% (Lake et al. 2015)",
        },
    ),
}


def train_for(
    cfg: Config, learner: MetaLearner, meta: Params, tasks, seconds: float, max_iterations: int
) -> int:
    """Meta-train in place until `seconds` of wall clock or `max_iterations`; returns iterations."""
    opt = outer_optimizer(cfg, meta)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    start = last_report = time.perf_counter()
    it = 0
    while it < max_iterations and time.perf_counter() - start < seconds:
        loss, grads = learner.meta_gradient(meta, tasks.sample(cfg.meta.meta_batch_size, gen))
        for k, p in meta.items():
            p.grad = grads[k]
        opt.step()
        it += 1
        if time.perf_counter() - last_report > 60:
            last_report = time.perf_counter()
            print(
                f"  {cfg.run.name}: iteration {it}, meta-loss {float(loss):.4f}, "
                f"{last_report - start:.0f} s",
                file=sys.stderr,
            )
    return it


def per_task(
    learner: MetaLearner, meta: Params, batch: TaskBatch, steps: int, key: str
) -> tuple[float, float]:
    """Mean over tasks of `key` after `steps` inner steps, and its 95% half-interval."""
    values = [learner.evaluate(meta, batch.task(i), steps)[key] for i in range(batch.n_tasks)]
    return statistics.fmean(values), 1.96 * statistics.stdev(values) / math.sqrt(len(values))


def run_case(name: str, case: Case, budget_s: float, data_dir: str) -> list[list[str]]:
    """Train one case for `budget_s` seconds and score it: one table row per metric."""
    overrides = [f"train.eval_tasks={case.eval_tasks}"]
    if name != "sinusoid":
        overrides.append(f"data.data_dir={data_dir!r}")
    cfg = load_config(ROOT / case.config, overrides)
    setup = build(cfg)
    learner, meta = setup.learner, setup.meta
    t0 = time.perf_counter()
    iterations = train_for(cfg, learner, meta, setup.train_tasks, budget_s, case.max_iterations)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    batch = eval_batch(cfg, setup.test_tasks, 10_000)
    results = []  # (metric, measured, published)
    if cfg.data.name == "sinusoid":
        for steps, label in ((1, "MSE after 1 step"), (10, "MSE after 10 steps")):
            mean, half = per_task(learner, meta, batch, steps, "loss_after")
            results.append((label, f"{mean:.3f} ± {half:.3f}", case.published[label]))
    else:
        steps = cfg.meta.eval_inner_steps
        mean, half = per_task(learner, meta, batch, steps, "acc_after")
        results.append(
            (
                f"accuracy ({steps} steps, {batch.n_tasks} tasks)",
                f"{100 * mean:.1f} ± {100 * half:.1f}%",
                case.published["accuracy"],
            )
        )
        if cfg.train.lake_runs:
            error = lake_runs_error(learner, meta, cfg)
            results.append(
                (
                    f"Lake 20-run error ({steps} steps)",
                    f"{100 * error:.1f}%",
                    case.published["Lake 20-run error"],
                )
            )
    eval_s = time.perf_counter() - t0
    trained = f"{iterations} it x {cfg.meta.meta_batch_size} tasks"
    return [
        [name, metric, trained, f"{train_s / 60:.1f} min", f"{eval_s:.0f} s", measured, published]
        for metric, measured, published in results
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--budget-minutes",
        type=float,
        default=42.0,
        help="total training time, shared among the cases run",
    )
    parser.add_argument("--case", choices=("all", *CASES), default="all")
    parser.add_argument("--data-dir", default="../shared/data", help="folder holding omniglot/")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads; 1 is robust when other processes share the cores",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = CASES if args.case == "all" else {args.case: CASES[args.case]}
    total_share = sum(c.share for c in chosen.values())
    rows = []
    for name, case in chosen.items():
        budget_s = 60 * args.budget_minutes * case.share / total_share
        rows += run_case(name, case, budget_s, args.data_dir)
    print(
        f"\nReproductions ({args.threads} thread(s), {args.budget_minutes:g} min training budget)\n"
    )
    print_table(
        ["case", "metric", "trained", "train time", "eval time", "measured", "published"], rows
    )


if __name__ == "__main__":
    main()
