"""torch's intra-op threads for a run, one rule for every process that computes for it (the
in-process run, a deployment's ServerApp and every ClientApp): `run.threads` when set, else
one thread for vmapped small networks (MLP meta-batches and vmapped clients), else this
machine's default (`default_threads`). The rule always sets an explicit count, so a process
computes the same numbers whatever thread count it started with: torch's own default
depends on how the process was started (a ClientApp process starts with every core, a test
process may have been set to one by an earlier run), and a float reduction split over a
different number of threads rounds differently.

Measured on 2 cores (docs/meta-learning.md, docs/federated.md): a 25-task sinusoid MLP
meta-step ran 0.15x as fast with two threads as with one on a shared machine, and vmapped
federated rounds lost the same way; conv nets gain from a second thread.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from fedmeta.config import Config


def default_threads() -> int:
    """The thread count torch picks in a fresh process, computed from the machine rather than
    read from the process: `OMP_NUM_THREADS` (then `MKL_NUM_THREADS`) when set to a positive
    integer, else the physical cores among the CPUs this process may run on."""
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        try:  # hyperthreads of one core share a siblings list
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def threads_for(cfg: Config, batching: str) -> int:
    """The rule: `run.threads`, else 1 for vmapped work, else `default_threads()`."""
    if cfg.run.threads is not None:
        return cfg.run.threads
    return 1 if batching == "vmap" else default_threads()


def use_threads(cfg: Config, batching: str) -> int:
    """Apply the rule to this process (before it computes anything for the run); returns the count."""
    n = threads_for(cfg, batching)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n
