"""A batch of tasks' MAML meta-gradient on an MLP, with the adapted weights kept as factors.

For a linear layer z = h Wᵀ + b and a task's support loss L, the inner gradient is
∂L/∂W = δᵀh and ∂L/∂b = 1ᵀδ, with δ = ∂L/∂z (n × out) and h the layer's input (n × in):
the per-example gradient factorisation of Goodfellow 2015 ("Efficient per-example gradient
computations", arXiv:1510.01799). One inner step with rate α turns the layer, applied to
inputs h', into

    h'(W − α δᵀh)ᵀ + b − α 1ᵀδ  =  h'Wᵀ + b − α (h'hᵀ + 1) δ,

so a batch of tasks needs the shared product h'Wᵀ (one matrix product over every task's
examples) and per-task products of n' × n, never the (tasks, out, in) adapted weights that
`vmap(grad(...))` materialises. δ of every task comes from one gradient of the summed
support losses w.r.t. a per-example copy of b (tasks share no terms).
Exact for nets of Linear layers and ReLUs (`fedmeta.models.MLP`) with plain gradient-descent
inner steps on whole layers: MAML, FOMAML and ANIL; Meta-SGD's per-weight rates do not
factor. Measured against the other batchings in benchmarks/meta_speed.py.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from fedmeta.data.base import TaskBatch
from fedmeta.meta.autodiff import Tensors, grad_with_aux, mean_grad_and_value
from fedmeta.models import MLP

Layer = tuple[str, bool]  # (parameter prefix, followed by a ReLU)
Terms = dict[str, list[tuple[Tensor, Tensor]]]  # prefix -> past steps' (h, δ), each (tasks, n, ·)


def mlp_layers(model: nn.Module) -> list[Layer] | None:
    """The linear layers of a `fedmeta.models.MLP` in order, or None for any other net."""
    if not isinstance(model, MLP):
        return None
    layers: list[Layer] = []
    for name, module in model.body.named_children():
        if isinstance(module, nn.Linear):
            layers.append((f"body.{name}", False))
        elif isinstance(module, nn.ReLU) and layers and not layers[-1][1]:
            layers[-1] = (layers[-1][0], True)
        else:
            return None
    return [*layers, ("head", False)]


def forward(
    params: Tensors,
    x: Tensor,
    layers: list[Layer],
    terms: Terms,
    rate: float,
    biases: Tensors | None = None,
) -> tuple[Tensor, Tensors]:
    """Each task's adapted MLP on its inputs x (tasks, n, *in) -> ((tasks, n, out), the inputs
    of the layers given per-example `biases` (tasks, n, out) in place of their own bias)."""
    h = x.flatten(2)  # (tasks, n, in)
    inputs: Tensors = {}
    for prefix, relu in layers:
        bias = params[prefix + ".bias"]
        if biases is not None and prefix in biases:
            inputs[prefix], bias = h, biases[prefix]
        z = torch.matmul(h, params[prefix + ".weight"].T) + bias  # (tasks, n, out)
        for hs, delta in terms.get(prefix, ()):
            z = torch.baddbmm(
                z, (h @ hs.mT).add_(1), delta, alpha=-rate
            )  # (tasks, n, n_s) @ (tasks, n_s, out)
        h = z.relu() if relu else z
    return h, inputs


def meta_gradient(
    meta: Tensors,
    batch: TaskBatch,
    layers: list[Layer],
    adapted: list[str],
    loss: Callable[[Tensor, Tensor], Tensor],
    inner_steps: int,
    inner_lr: float,
    first_order: bool,
) -> tuple[Tensor, Tensors]:
    """Mean query loss after `inner_steps` steps on the layers `adapted` (prefixes), and its
    gradient w.r.t. `meta` (the MLP's parameters). `loss` is a mean over examples."""
    n_tasks, n_support = batch.xs.shape[:2]

    def mean_loss(out: Tensor, y: Tensor) -> Tensor:  # (tasks, n, out), (tasks, n, ·)
        return loss(out.flatten(0, 1), y.flatten(0, 1))  # = mean over tasks of each task's loss

    def objective(params: Tensors) -> Tensor:
        terms: Terms = {p: [] for p in adapted}
        for _ in range(inner_steps):
            # δ = ∂L/∂z of every example is the gradient w.r.t. a per-example copy of the bias
            biases = {p: params[p + ".bias"].expand(n_tasks, n_support, -1) for p in adapted}

            def support(biases: Tensors) -> tuple[Tensor, Tensors]:
                out, inputs = forward(params, batch.xs, layers, terms, inner_lr, biases)
                return mean_loss(out, batch.ys) * n_tasks, inputs  # the sum of the tasks' losses

            deltas, inputs = grad_with_aux(support, biases, create_graph=not first_order)
            for p in adapted:
                terms[p].append((inputs[p].detach() if first_order else inputs[p], deltas[p]))
        out, _ = forward(params, batch.xq, layers, terms, inner_lr)
        return mean_loss(out, batch.yq)

    grads, value = mean_grad_and_value(objective, meta, [()])
    return value, grads
