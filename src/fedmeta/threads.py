"""torch's intra-op threads for a run: `run.threads` when set, else one thread for vmapped
small networks (MLP meta-batches and vmapped clients), else torch's default.

Measured on 2 cores (docs/meta-learning.md, docs/federated.md): a 25-task sinusoid MLP
meta-step ran 0.15x as fast with two threads as with one on a shared machine, and vmapped
federated rounds lost the same way; conv nets gain from a second thread.
"""

from __future__ import annotations

import torch

from fedmeta.config import Config


def use_threads(cfg: Config, batching: str) -> None:
    if cfg.run.threads is not None:
        torch.set_num_threads(cfg.run.threads)
    elif batching == "vmap":
        torch.set_num_threads(1)
