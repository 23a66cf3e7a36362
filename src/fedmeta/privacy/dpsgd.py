"""Example-level DP-SGD (Abadi et al., CCS 2016, "Deep Learning with Differential Privacy").

Each step draws a Poisson sample (every example independently with rate q), computes
per-example gradients with `torch.func.vmap(torch.func.grad(loss))`, clips each to L2 norm
C, sums, adds N(0, σ²C²) per coordinate and divides by the expected batch size q·n (a
fixed divisor: the realised batch size would itself leak). `T` such steps cost the
`Accountant` `step(noise_multiplier=σ, sample_rate=q, steps=T)`.

`loss_fn(params, x, y)` must be a functional mean loss over a batch (wrap a module with
`torch.func.functional_call`). Per-example vmap cannot run batch norm in training mode
(its statistics mix examples, which also breaks the privacy argument): use group or layer
norm, or batch norm in eval mode.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor
from torch.func import grad, vmap

from fedmeta.errors import BadInput
from fedmeta.privacy.noise import gaussian_like, secure_rng

Params = dict[str, Tensor]
LossFn = Callable[[Params, Tensor, Tensor], Tensor]


def poisson_sample(n: int, sample_rate: float, rng: np.random.Generator | None = None) -> Tensor:
    """Indices of a Poisson sample: each of n examples kept independently with prob. q."""
    if not 0 < sample_rate <= 1:
        raise BadInput("sample_rate", sample_rate, "a rate q in (0, 1]")
    rng = rng if rng is not None else secure_rng()
    return torch.from_numpy(np.flatnonzero(rng.random(n) < sample_rate))


def per_example_grads(loss_fn: LossFn, params: Params, x: Tensor, y: Tensor) -> Params:
    """Gradient of the loss of each example alone; each entry is (batch, *param.shape)."""

    def one(p: Params, xi: Tensor, yi: Tensor) -> Tensor:
        return loss_fn(p, xi.unsqueeze(0), yi.unsqueeze(0))

    return vmap(grad(one), in_dims=(None, 0, 0))(params, x, y)


def clipped_sum(grads: Params, max_norm: float) -> Params:
    """Σ_i g_i · min(1, C / ‖g_i‖₂) over the leading example axis, norms over all tensors."""
    flat = torch.cat([g.flatten(1) for g in grads.values()], dim=1)  # (batch, dim)
    norms = flat.double().norm(dim=1)  # (batch,)
    factors = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
    return {name: torch.einsum("b,b...->...", factors.to(g.dtype), g) for name, g in grads.items()}


def private_grad(
    loss_fn: LossFn,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    max_grad_norm: float,
    noise_multiplier: float,
    expected_batch_size: float | None = None,
    rng: np.random.Generator | None = None,
) -> Params:
    """(Σ_i clip_C(∇ℓ(params; x_i, y_i)) + N(0, σ²C²)) / expected batch size.

    `expected_batch_size` defaults to len(x); under Poisson sampling pass q·n. `rng=None`
    draws the noise from fresh OS entropy (see `fedmeta.privacy.noise`).
    """
    if not max_grad_norm > 0:
        raise BadInput("max_grad_norm", max_grad_norm, "a positive number or inf")
    if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
        raise BadInput("noise_multiplier", noise_multiplier, "a finite number >= 0")
    if noise_multiplier > 0 and math.isinf(max_grad_norm):
        raise BadInput("max_grad_norm", max_grad_norm, "finite when noise_multiplier > 0")
    divisor = float(len(x)) if expected_batch_size is None else expected_batch_size
    if not divisor > 0:
        raise BadInput("expected_batch_size", expected_batch_size, "a positive number")
    params = {name: p.detach() for name, p in params.items()}
    if len(x) == 0:  # an empty Poisson sample still releases noise
        total = {name: torch.zeros_like(p) for name, p in params.items()}
    else:
        total = clipped_sum(per_example_grads(loss_fn, params, x, y), max_grad_norm)
    if noise_multiplier > 0:
        std = noise_multiplier * max_grad_norm
        noise = gaussian_like(total, std, rng if rng is not None else secure_rng())
        total = {name: t + noise[name] for name, t in total.items()}
    return {name: t / divisor for name, t in total.items()}


def dp_sgd_steps(
    loss_fn: LossFn,
    params: Params,
    x: Tensor,
    y: Tensor,
    *,
    steps: int,
    lr: float,
    sample_rate: float,
    max_grad_norm: float,
    noise_multiplier: float,
    rng: np.random.Generator | None = None,
) -> Params:
    """`steps` steps of DP-SGD on (x, y) with Poisson sampling at rate q; returns new params.

    Account for them with `Accountant.step(noise_multiplier=σ, sample_rate=q, steps=steps)`.
    """
    if not (isinstance(steps, int) and steps >= 1):
        raise BadInput("steps", steps, "an integer >= 1")
    params = {name: p.detach() for name, p in params.items()}
    for _ in range(steps):
        step_rng = rng if rng is not None else secure_rng()
        idx = poisson_sample(len(x), sample_rate, step_rng)
        g = private_grad(
            loss_fn,
            params,
            x[idx],
            y[idx],
            max_grad_norm=max_grad_norm,
            noise_multiplier=noise_multiplier,
            expected_batch_size=sample_rate * len(x),
            rng=step_rng,
        )
        params = {name: p - lr * g[name] for name, p in params.items()}
    return params
