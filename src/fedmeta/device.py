"""Where a run computes: `run.device` resolved against this machine, and the moves between
the device and the CPU (docs/gpu.md).

The device holds the network and the batches that train and evaluate it; parameter dicts,
updates and state that must be exact or become bytes (DP noise, compression, signatures,
aggregation, checkpoints, `model.pt`, the ledger) stay on the CPU. On the CPU every move
is the identity: a CPU run computes exactly what it did before the option existed.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fedmeta.data.base import TaskBatch
from fedmeta.errors import ConfigError
from fedmeta.params import Params

CPU = torch.device("cpu")


def available() -> list[str]:
    """This machine's devices: cpu, then each CUDA device, then mps."""
    cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    return ["cpu", *cuda, *(["mps"] if torch.backends.mps.is_available() else [])]


def auto() -> str:
    """What "auto" means here: cuda when available, else mps when available, else cpu."""
    if torch.cuda.is_available():
        return "cuda"
    return "mps" if torch.backends.mps.is_available() else "cpu"


def resolve(requested: str | None, example_dp: bool = False) -> torch.device:
    """`run.device` on this machine ("auto" when None); a device asked for but absent is a
    one-line `ConfigError` naming `run.device`. Example-level DP clips in float64, which
    MPS lacks: refused there."""
    device = torch.device(auto() if requested in (None, "auto") else requested)
    here = available()
    name = device.type if device.type != "cuda" else f"cuda:{device.index or 0}"
    if name not in here:
        raise ConfigError("run.device", requested, f"a device this machine has (available: {', '.join(here)}; "
                                                   "'auto' picks the first of cuda, mps and cpu)")
    if example_dp and device.type == "mps":
        raise ConfigError("run.device", requested or "auto", "'cpu' or 'cuda' with privacy.dp = 'example' "
                                                             "(per-example clipping computes in float64, which MPS lacks)")
    return device


def device_of(model: nn.Module) -> torch.device:
    """Where the network's parameters live (the run's device)."""
    return next((p.device for p in model.parameters()), CPU)


def to_device(params: Params, device: torch.device) -> Params:
    """The tensors on `device` (the same tensors when they are there already)."""
    return {k: v.to(device) for k, v in params.items()}


def batch_to(batch: TaskBatch, device: torch.device) -> TaskBatch:
    return TaskBatch(*(t.to(device) for t in (batch.xs, batch.ys, batch.xq, batch.yq)))


def to_cpu(tree: Any) -> Any:
    """Every tensor in nested dicts, lists and tuples moved to the CPU (state for
    checkpoints and files); CPU tensors are returned as they are."""
    if isinstance(tree, torch.Tensor):
        return tree.cpu()
    if isinstance(tree, dict):
        return {k: to_cpu(v) for k, v in tree.items()}
    if type(tree) in (list, tuple):
        return type(tree)(to_cpu(v) for v in tree)
    return tree
