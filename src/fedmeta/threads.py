"""torch's intra-op threads for a run, one rule for every process that computes for it (the
in-process run, a deployment's ServerApp and every ClientApp): `run.threads` when set, else
one thread for vmapped small networks (MLP meta-batches and vmapped clients), else this
machine's default (`default_threads`: its physical cores, within the cgroup's CPU quota). The rule always sets an explicit count, so a process
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


def cpu_quota(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs' worth of time the cgroup allows (a container limited to 2 CPUs on a large host),
    rounded up; None when unlimited or unknown. cgroup v2 `cpu.max`, else v1 `cpu/cpu.cfs_*`."""
    for path, split in ((root / "cpu.max", None), (root / "cpu" / "cpu.cfs_quota_us", "cpu.cfs_period_us")):
        try:
            text = path.read_text().split()
            quota, period = (text[0], text[1]) if split is None else (text[0], path.with_name(split).read_text().strip())
            if quota not in ("max", "-1") and int(period) > 0:
                return max(1, -(-int(quota) // int(period)))
        except (OSError, ValueError, IndexError):
            continue
    return None


def default_threads() -> int:
    """The machine's thread count, computed from the machine rather than read from the
    process (so every process of a run on it gets the same): `OMP_NUM_THREADS` (then
    `MKL_NUM_THREADS`) when set to a positive integer, else the physical cores among the CPUs
    this process may run on, at most the cgroup's CPU quota."""
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
    return max(1, min(len(cores), cpu_quota() or len(cores)))


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
