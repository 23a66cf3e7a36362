"""A batch of tasks' MAML meta-gradient on an MLP, with the adapted weights kept as factors.

For a linear layer z = h Wᵀ + b and a task's support loss L, the inner gradient is
∂L/∂W = δᵀh and ∂L/∂b = 1ᵀδ, with δ = ∂L/∂z (n × out) and h the layer's input (n × in):
the per-example gradient factorisation of Goodfellow 2015 ("Efficient per-example gradient
computations", arXiv:1510.01799). One inner step with rate α turns the layer, applied to
inputs h', into

    h'(W − α δᵀh)ᵀ + b − α 1ᵀδ  =  h'Wᵀ + b − α (h'hᵀ + 1) δ,

so a batch of tasks needs the shared product h'Wᵀ (one matrix product over every task's
examples) and per-task products of n' × n, never the (tasks, out, in) adapted weights that
`vmap(grad(...))` materialises and that made it memory-bound. δ of every task comes from one
gradient of the summed support losses w.r.t. a zero added to z (tasks do not share terms).
Exact for nets of Linear layers and ReLUs (`fedmeta.models.MLP`) with plain gradient-descent
inner steps on whole layers: MAML, FOMAML and ANIL; Meta-SGD's per-weight rates do not
factor. Measured against the other batchings in benchmarks/meta_speed.py.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn
from torch.func import vmap

from fedmeta.data.base import TaskBatch
from fedmeta.meta.autodiff import Tensors, grad_and_value, grad_with_aux
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
    params: Tensors, x: Tensor, layers: list[Layer], terms: Terms, rate: float, perturb: Tensors | None = None
) -> tuple[Tensor, Tensors]:
    """Each task's adapted MLP on its inputs x (tasks, n, *in) -> ((tasks, n, out), the
    inputs of the layers in `perturb`, to which `perturb` is added before the activation)."""
    h = x.flatten(2)  # (tasks, n, in)
    inputs: Tensors = {}
    for prefix, relu in layers:
        z = h @ params[prefix + ".weight"].T + params[prefix + ".bias"]  # (tasks, n, out)
        for hs, delta in terms.get(prefix, ()):
            z = z - rate * ((h @ hs.transpose(1, 2) + 1) @ delta)  # (tasks, n, n_s) @ (tasks, n_s, out)
        if perturb is not None and prefix in perturb:
            inputs[prefix] = h
            z = z + perturb[prefix]
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
    gradient w.r.t. `meta` (the MLP's parameters)."""
    task_loss = vmap(loss)  # (tasks, n, out), (tasks, n) -> (tasks,)
    n_tasks, n_support = batch.xs.shape[:2]

    def objective(params: Tensors) -> Tensor:
        terms: Terms = {p: [] for p in adapted}
        for _ in range(inner_steps):
            zeros = {p: batch.xs.new_zeros(n_tasks, n_support, params[p + ".bias"].shape[0]) for p in adapted}

            def support(perturb: Tensors) -> tuple[Tensor, Tensors]:
                out, inputs = forward(params, batch.xs, layers, terms, inner_lr, perturb)
                return task_loss(out, batch.ys).sum(), inputs

            deltas, inputs = grad_with_aux(support, zeros, create_graph=not first_order)
            for p in adapted:
                terms[p].append((inputs[p].detach() if first_order else inputs[p], deltas[p]))
        out, _ = forward(params, batch.xq, layers, terms, inner_lr)
        return task_loss(out, batch.yq).mean()

    grads, value = grad_and_value(objective, meta)
    return value, grads
