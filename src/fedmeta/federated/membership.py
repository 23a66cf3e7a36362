"""The run's membership-inference audit: can an attacker holding the final global model tell
the training clients' examples from examples of clients that never trained?

Loss-threshold attack (Yeom, Giacomelli, Fredrikson & Jha, CSF 2018) scored as ROC AUC and
TPR at low FPR (Carlini et al., IEEE S&P 2022), see `fedmeta.privacy.audit`. Members are
every example held by a training client, non-members every example of the held-out
clients — both drawn by the same partition of one pool, so a perfect-privacy model leaves
AUC ≈ 0.5. Client-level DP bounds this attack (and any other) through ε; the audit
measures what this model actually leaks. Runs only on example-holding clients (digits,
Synthetic); task-space clients (sinusoid regions, Omniglot drawers) have no fixed
example set to audit.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from fedmeta.data.federated import ExampleClient, FederatedData
from fedmeta.device import device_of, to_device
from fedmeta.meta.base import MetaLearner, Params
from fedmeta.privacy.audit import loss_threshold_attack


def per_example_loss(learner: MetaLearner, params: Params, x: Tensor, y: Tensor) -> Tensor:
    """The global model's loss on each example (no adaptation), computed on the run's
    device; (n,) on the CPU."""
    device = device_of(learner.model)
    x, y = x.to(device), y.to(device)
    with torch.no_grad():
        out = learner.forward(learner.network(to_device(params, device)), x)
    if learner.kind == "regression":
        return (out - y).pow(2).flatten(1).mean(1).cpu()
    return F.cross_entropy(out, y, reduction="none").cpu()


def membership_audit(learner: MetaLearner, params: Params, data: FederatedData) -> dict[str, Any] | None:
    """Loss-threshold attack on the final model; None when the clients hold no examples."""
    train = [c for c in data.train if isinstance(c, ExampleClient)]
    held = [c for c in data.held_out if isinstance(c, ExampleClient)]
    if not train or not held or len(train) != len(data.train):
        return None

    params = to_device(params, device_of(learner.model))  # once, not per client

    def losses(clients: list[ExampleClient]) -> Tensor:
        return torch.cat([per_example_loss(learner, params, c.x, c.y) for c in clients])

    result = loss_threshold_attack(losses(train).numpy(), losses(held).numpy())
    return {"attack": "loss threshold (Yeom et al. 2018)", **result.to_json()}
