"""Centralized meta-training: the loop `fedmeta run` drives when no federation is configured.

Each iteration samples a meta-batch of episodes (on the CPU, from the run's generator),
moves it to the run's device (`run.device`), computes the meta-gradient with the
configured learner and applies the outer optimizer there. Every `eval_every` iterations
the same held-out episodes are scored before and after adaptation, a metrics line is
written and a checkpoint taken (CPU tensors, as `model.pt`), so `--resume` continues
exactly where the run stopped.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from fedmeta.build import learner_for, network_for
from fedmeta.config import Config
from fedmeta.data import make_tasks
from fedmeta.data.base import TaskDistribution
from fedmeta.device import batch_to, device_of, to_cpu
from fedmeta.meta import MetaLearner, Params
from fedmeta.models import parameters_of
from fedmeta.progress import progress_bar
from fedmeta.rundir import RunDir
from fedmeta.threads import use_threads


@dataclass
class Setup:
    """Everything a run needs that follows from the config alone."""

    train_tasks: TaskDistribution
    test_tasks: TaskDistribution
    learner: MetaLearner
    meta: Params


def build(cfg: Config) -> Setup:
    train_tasks, test_tasks = make_tasks(cfg.data, "train"), make_tasks(cfg.data, "test")
    model = network_for(cfg, train_tasks.x_shape, train_tasks.n_outputs)
    learner = learner_for(cfg, model, train_tasks.kind)
    return Setup(train_tasks, test_tasks, learner, learner.init(parameters_of(model)))


def outer_optimizer(cfg: Config, meta: Params) -> torch.optim.Optimizer:
    params = list(meta.values())
    if cfg.train.outer_optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.train.outer_lr)
    return torch.optim.Adam(params, lr=cfg.train.outer_lr)


def eval_batch(cfg: Config, tasks: TaskDistribution, offset: int) -> Any:
    """The fixed held-out episodes scored at every evaluation (same seed, same tasks)."""
    return tasks.sample(cfg.train.eval_tasks, torch.Generator().manual_seed(cfg.run.seed + offset))


def train(cfg: Config, run: RunDir, *, resume: bool = False, show_progress: bool = True,
          setup: Setup | None = None) -> dict:
    """Meta-train to the end. Every evaluation is committed to the checkpoint with its
    metrics rows, then published; the end commits the summary, then writes `model.pt` and
    `summary.json` (`fedmeta.rundir`), so a resumed run repeats nothing it published."""
    setup = build(cfg) if setup is None else setup
    learner, meta, device = setup.learner, setup.meta, device_of(setup.learner.model)
    use_threads(cfg, learner.batching)
    opt = outer_optimizer(cfg, meta)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    progress: dict[str, Any] = {"iteration": 0, "elapsed": 0.0, "last": {}}
    committed = run.load_checkpoint() if resume else None
    if committed is not None:
        state = committed["state"]
        for k, v in state["meta"].items():
            meta[k].copy_(v)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["generator"])
        progress = state["progress"]
    t0 = time.perf_counter() - progress["elapsed"]

    def publish(step: dict[str, Any]) -> dict | None:
        if "final" not in step:
            return None
        run.save_model(to_cpu(meta))
        run.write_json("summary.json", step["final"])
        return step["final"]

    def commit(step: dict[str, Any]) -> dict | None:
        progress["elapsed"] = time.perf_counter() - t0
        state = {"meta": to_cpu(meta), "optimizer": to_cpu(opt.state_dict()), "generator": gen.get_state(),
                 "progress": progress}
        run.commit(state, step)
        return publish(step)

    if committed is not None and (done := publish(committed["publish"])) is not None:
        return done
    evals = {
        "test": batch_to(eval_batch(cfg, setup.test_tasks, 10_000), device),
        "train": batch_to(eval_batch(cfg, setup.train_tasks, 20_000), device),
    }

    def evaluate(it: int, train_loss: float | None) -> list[dict]:
        rows = []
        for split, batch in evals.items():
            row = {"round": it, "split": split, **learner.evaluate(meta, batch, cfg.meta.eval_inner_steps)}
            if split == "train" and train_loss is not None:
                row["meta_loss"] = train_loss
            rows.append(row)
        progress["iteration"], progress["last"] = it, rows[0]
        return rows

    start = progress["iteration"]
    with progress_bar(cfg.train.iterations, start, "meta-training", show_progress) as advance:
        if committed is None:
            commit({"rows": evaluate(0, None)})
        for it in range(start + 1, cfg.train.iterations + 1):
            batch = batch_to(setup.train_tasks.sample(cfg.meta.meta_batch_size, gen), device)
            loss, grads = learner.meta_gradient(meta, batch)
            for k, p in meta.items():
                p.grad = grads[k]
            opt.step()
            if it % cfg.train.eval_every == 0 or it == cfg.train.iterations:
                commit({"rows": evaluate(it, float(loss))})
            last = progress["last"]
            advance(loss=float(loss), **{k: last[k] for k in ("loss_after", "acc_after") if k in last})
    summary = {
        "mode": "centralized",
        "algorithm": cfg.meta.algorithm,
        "iterations": cfg.train.iterations,
        "seconds": round(time.perf_counter() - t0, 2),
        "final": {k: v for k, v in progress["last"].items() if k not in ("round", "split")},
    }
    if cfg.train.lake_runs:
        from fedmeta.data.omniglot import lake_runs_error

        summary["lake_error_rate"] = lake_runs_error(learner, meta, cfg)
    return commit({"rows": [], "final": summary})
