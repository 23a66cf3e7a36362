"""The two gradient calls the meta-learners need, by torch.autograd or by torch.func.

torch.func's `grad` composes with `vmap` (the federated runtime maps meta-gradients over
clients) but pays a transform set-up on every call; a per-task loop of them ran at 0.44x
a plain `torch.autograd.grad(..., create_graph=True)` loop on the sinusoid MLP
(benchmarks/meta_speed.py). So each call differentiates with torch.autograd when no
torch.func transform is active and grad mode is on, and with torch.func otherwise; both
give the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        inputs = {
            k: v if v.requires_grad else v.detach().requires_grad_() for k, v in inputs.items()
        }
        value, aux = fn(inputs)
        grads = torch.autograd.grad(
            value, inputs, create_graph=create_graph, materialize_grads=True
        )
        return grads, aux
    grads, aux = grad(fn, has_aux=True)(inputs)
    if not create_graph:
        grads = {k: g.detach() for k, g in grads.items()}
    return grads, aux


def mean_grad_and_value(
    fn: Callable[..., Tensor], params: Tensors, items: Sequence[tuple[Tensor, ...]]
) -> tuple[Tensors, Tensor]:
    """Mean over `items` of the scalar `fn(params, *item)` and its gradient w.r.t. `params`,
    one item at a time (only one item's graph alive); eagerly both are detached from any
    graph `params` belong to, and the items' gradients add up in one set of leaves."""
    n = len(items)
    if not eager():
        grads, values = zip(*(torch.func.grad_and_value(fn)(params, *item) for item in items))
        return {k: torch.stack([g[k] for g in grads]).mean(0) for k in params}, torch.stack(
            values
        ).mean()
    leaves = {k: v.detach().requires_grad_() for k, v in params.items()}
    values = []
    for item in items:
        value = fn(leaves, *item)
        (value / n).backward()
        values.append(value.detach())
    grads = {k: torch.zeros_like(v) if v.grad is None else v.grad for k, v in leaves.items()}
    return grads, torch.stack(values).mean()
