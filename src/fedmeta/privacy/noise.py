"""Where privacy noise comes from: fresh OS entropy per draw, or a seed when asked.

Secure mode (the default) seeds numpy's PCG64DXSM bit generator with 128 bits from
`secrets` (the OS CSPRNG) for every draw, so no generator state outlives one noise
vector and knowing one round's state says nothing about the next. Within one draw the
normals come from PCG64DXSM + ziggurat, which is fast but not a cryptographic generator,
and they are IEEE floats: Mironov (CCS 2012, "On Significance of the Least Significant
Bits for Differential Privacy") shows floating-point samplers can leak through the
low-order bits. A discrete Gaussian sampler (Canonne, Kamath & Steinke, NeurIPS 2020) on
an integer grid removes that channel; it is not implemented here (see docs/privacy.md).
torch's own `randn` draws from a Mersenne Twister with a 64-bit seed, which is why it is
not used for noise.

Seeded mode derives the generator from (seed, counters) with `SeedSequence`, so a step is
reproducible from a checkpoint, and warns `InsecureNoiseWarning` at every use.
"""

from __future__ import annotations

import secrets
import warnings

import numpy as np
import torch

from fedmeta.params import Params


class InsecureNoiseWarning(UserWarning):
    """Noise drawn from a caller-chosen seed: reproducible, so not private against the seed holder."""


def secure_rng() -> np.random.Generator:
    """A generator seeded with 128 fresh bits from the OS CSPRNG."""
    return np.random.Generator(np.random.PCG64DXSM(np.random.SeedSequence(secrets.randbits(128))))


def seeded_rng(seed: int, *counters: int) -> np.random.Generator:
    """A reproducible generator for (seed, counters...); warns that its noise is not secure."""
    warnings.warn(
        f"privacy noise is seeded (seed={seed}): reproducible, NOT secure; use only for tests "
        "and debugging",
        InsecureNoiseWarning,
        stacklevel=2,
    )
    return np.random.Generator(
        np.random.PCG64DXSM(np.random.SeedSequence(seed, spawn_key=tuple(counters)))
    )


def rng_for(seed: int | None, *counters: int) -> np.random.Generator:
    """`secure_rng()` when seed is None, else `seeded_rng(seed, *counters)`."""
    return secure_rng() if seed is None else seeded_rng(seed, *counters)


def gaussian_like(like: Params, std: float, rng: np.random.Generator) -> Params:
    """Independent N(0, std²) noise with the shape and dtype of each tensor in `like`."""
    return {
        name: torch.from_numpy(rng.standard_normal(t.shape) * std).to(t.device, t.dtype)
        for name, t in like.items()
    }


def uniform_like(like: Params, rng: np.random.Generator) -> Params:
    """Independent U[0, 1) draws (float64) with the shape of each tensor in `like`."""
    return {name: torch.from_numpy(rng.random(t.shape)).to(t.device) for name, t in like.items()}
