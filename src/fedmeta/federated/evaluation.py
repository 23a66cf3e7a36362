"""Personalization, the figure federated meta-learning is for: each evaluation client's
query loss and accuracy before and after `meta.eval_inner_steps` adaptation steps on its
own support set, from the global model (Chen et al. 2018; Fallah et al. 2020).

Evaluation client i draws its one episode from its own stream (`evaluation_generator`), so
the figures are the same whether the server holds the clients' data (in-process, or a
deployed benchmark) or each owner computes its own (`client_figures`, on its supernode).
The episodes are drawn on the CPU and scored on the run's device (`run.device`): the
parameters and the episodes go there once per evaluation, the figures come back.
"""

from __future__ import annotations

from typing import Any

import torch

from fedmeta.data.base import TaskBatch
from fedmeta.data.federated import FederatedData
from fedmeta.device import batch_to, device_of, to_cpu, to_device
from fedmeta.federated.sampling import evaluation_generator
from fedmeta.meta import MetaLearner
from fedmeta.params import Params

MAX_TRAIN_CLIENTS = 200  # training clients evaluated (the first ones)


def evaluation_clients(data: FederatedData, split: str) -> list:
    return data.held_out if split == "test" else data.train[:MAX_TRAIN_CLIENTS]


def episodes(clients: list, indices: list[int], *, seed: int, split: str) -> TaskBatch:
    """Each client's evaluation episode, one task each; `indices`: the clients' places among
    the split's evaluation clients."""
    eps = [c.sample(1, evaluation_generator(seed, split, i)) for c, i in zip(clients, indices, strict=True)]
    return TaskBatch(*(torch.cat([getattr(e, f) for e in eps]) for f in ("xs", "ys", "xq", "yq")))


def client_figures(learner: MetaLearner, params: Params, batch: TaskBatch, inner_steps: int) -> dict[str, torch.Tensor]:
    """Each client's figures (metric -> one value per client) on its evaluation episode
    (`episodes`: one task per client)."""
    device = device_of(learner.model)
    return to_cpu(learner.evaluate(to_device(params, device), batch_to(batch, device), inner_steps, per_task=True))


def pooled_figures(learner: MetaLearner, params: Params, batch: TaskBatch, inner_steps: int,
                   metrics: list[str]) -> dict[str, float]:
    """`meta.eval_metrics` over every query example of `batch` together, before and after
    adaptation: rmse and mae of a regression; auc (scikit-learn's, of class 1's softmax
    probability; left out when the query holds one class only) and balanced_accuracy
    (the mean of the classes' recalls) of a classification."""
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    device = device_of(learner.model)
    outputs = to_cpu(learner.predict(to_device(params, device), batch_to(batch, device), inner_steps))
    y = batch.yq.reshape(-1).numpy()
    out: dict[str, float] = {}
    for when, raw in zip(("before", "after"), outputs, strict=True):
        raw = raw.reshape(len(y), -1).double()
        for metric in metrics:
            if metric == "rmse":
                out[f"rmse_{when}"] = float(((raw[:, 0] - torch.from_numpy(y)) ** 2).mean().sqrt())
            elif metric == "mae":
                out[f"mae_{when}"] = float((raw[:, 0] - torch.from_numpy(y)).abs().mean())
            elif metric == "auc" and len(set(y.tolist())) == 2:
                out[f"auc_{when}"] = float(roc_auc_score(y, raw.softmax(-1)[:, 1].numpy()))
            elif metric == "balanced_accuracy":
                out[f"balanced_acc_{when}"] = float(balanced_accuracy_score(y, raw.argmax(-1).numpy()))
    return out


def summarize(per: dict[str, torch.Tensor], split: str) -> dict[str, Any]:
    """A metrics row from the clients' figures: means, the 10th percentile of accuracy, the
    90th of the loss after adaptation, and `per_client`, each client's."""
    row: dict[str, Any] = {"split": split, "eval_clients": len(next(iter(per.values())))}
    for k, v in per.items():
        row[k] = float(v.mean())
    if "acc_after" in per:
        row["acc_before_p10"] = float(per["acc_before"].quantile(0.1))
        row["acc_after_p10"] = float(per["acc_after"].quantile(0.1))
    row["loss_after_p90"] = float(per["loss_after"].quantile(0.9))
    row["per_client"] = {k: [round(float(x), 6) for x in v] for k, v in per.items()}
    return row


def personalization(learner: MetaLearner, params: Params, data: FederatedData, *, seed: int, inner_steps: int,
                    split: str = "test", metrics: list[str] | None = None) -> dict[str, Any]:
    """The held-out clients' (`split="test"`) or the first training clients' figures, on
    the same episodes every time, with the pooled `metrics` (`meta.eval_metrics`)."""
    clients = evaluation_clients(data, split)
    batch = episodes(clients, list(range(len(clients))), seed=seed, split=split)  # drawn once for all figures
    row = summarize(client_figures(learner, params, batch, inner_steps), split)
    if metrics:
        pooled = pooled_figures(learner, params, batch, inner_steps, metrics)
        row = {**{k: v for k, v in row.items() if k != "per_client"}, **pooled, "per_client": row["per_client"]}
    return row
