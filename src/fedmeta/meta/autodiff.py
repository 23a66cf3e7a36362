"""The two gradient calls the meta-learners need, by torch.autograd or by torch.func.

torch.func's `grad` composes with `vmap` (the federated runtime maps meta-gradients over
clients) but pays a transform set-up on every call; a per-task loop of them ran at 0.44x
a plain `torch.autograd.grad(..., create_graph=True)` loop on the sinusoid MLP
(benchmarks/meta_speed.py). So each call differentiates with torch.autograd when no
torch.func transform is active and grad mode is on, and with torch.func otherwise; both
give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.func import grad

Tensors = dict[str, Tensor]


def eager() -> bool:
    """Whether plain autograd can be used: grad mode on and no torch.func transform active."""
    return torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active()


def tracked(tensors: Tensors) -> bool:
    """Whether something may differentiate through these tensors: always inside torch.func
    transforms, eagerly only if one of them requires grad (not in evaluation)."""
    return not eager() or any(v.requires_grad for v in tensors.values())


def grad_with_aux(
    fn: Callable[[Tensors], tuple[Tensor, Any]], inputs: Tensors, create_graph: bool
) -> tuple[Tensors, Any]:
    """Gradient of the scalar `fn(inputs)[0]` w.r.t. `inputs`, and `fn`'s auxiliary output.

    With `create_graph` the gradient stays differentiable w.r.t. whatever `inputs` were
    computed from (second-order MAML); without, it is a constant (first order).
    """
    if eager():
        inputs = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in inputs.items()}
        value, aux = fn(inputs)
        grads = torch.autograd.grad(value, inputs, create_graph=create_graph, materialize_grads=True)
        return grads, aux
    grads, aux = grad(fn, has_aux=True)(inputs)
    if not create_graph:
        grads = {k: g.detach() for k, g in grads.items()}
    return grads, aux


def grad_and_value(fn: Callable[[Tensors], Tensor], params: Tensors) -> tuple[Tensors, Tensor]:
    """Gradient w.r.t. `params` and value of the scalar `fn(params)`; eagerly both are
    detached from any graph `params` belong to."""
    if not eager():
        return torch.func.grad_and_value(fn)(params)
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    value = fn(leaves)
    return torch.autograd.grad(value, leaves, materialize_grads=True), value.detach()
