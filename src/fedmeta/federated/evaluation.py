"""Personalization, the figure federated meta-learning is for: each evaluation client's
query loss and accuracy before and after `meta.eval_inner_steps` adaptation steps on its
own support set, from the global model (Chen et al. 2018; Fallah et al. 2020).
"""

from __future__ import annotations

from typing import Any

import torch

from fedmeta.data.base import TaskBatch
from fedmeta.data.federated import FederatedData
from fedmeta.federated.sampling import EVAL_TEST, EVAL_TRAIN, generator
from fedmeta.meta import MetaLearner
from fedmeta.params import Params


def personalization(learner: MetaLearner, params: Params, data: FederatedData, *, seed: int, inner_steps: int,
                    split: str = "test", max_clients: int = 200) -> dict[str, Any]:
    """The held-out clients' (`split="test"`) or the first training clients' figures, on
    the same episodes every time; `per_client` holds each client's."""
    clients = data.held_out if split == "test" else data.train[:max_clients]
    gen = generator(seed, 0, 0, EVAL_TEST if split == "test" else EVAL_TRAIN)
    eps = [c.sample(1, gen) for c in clients]
    batch = TaskBatch(*(torch.cat([getattr(e, f) for e in eps]) for f in ("xs", "ys", "xq", "yq")))
    per = learner.evaluate(params, batch, inner_steps, per_task=True)
    row: dict[str, Any] = {"split": split, "eval_clients": len(clients)}
    for k, v in per.items():
        row[k] = float(v.mean())
    if "acc_after" in per:
        row["acc_before_p10"] = float(per["acc_before"].quantile(0.1))
        row["acc_after_p10"] = float(per["acc_after"].quantile(0.1))
    row["loss_after_p90"] = float(per["loss_after"].quantile(0.9))
    row["per_client"] = {k: [round(float(x), 6) for x in v] for k, v in per.items()}
    return row
