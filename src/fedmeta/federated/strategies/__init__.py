"""Server strategies, one per file, named after the paper's algorithm.

Built from the `[federated.server]` section by `build(STRATEGIES,
cfg.federated.server.strategy, cfg.federated.server)` (fedmeta.federated.registry): each
strategy's dataclass fields are the section's keys it reads (lr, momentum, beta1, beta2,
tau). A new strategy is one file with its class and one line in STRATEGIES; one outside
fedmeta is named by import path ("pkg.mod:Class") or a `fedmeta.plugins` entry point
(docs/extending.md).
"""

from fedmeta.federated.registry import Registry
from fedmeta.federated.strategies.base import Strategy
from fedmeta.federated.strategies.fedadagrad import FedAdagrad
from fedmeta.federated.strategies.fedadam import FedAdam
from fedmeta.federated.strategies.fedavg import FedAvg
from fedmeta.federated.strategies.fedavgm import FedAvgM
from fedmeta.federated.strategies.fedyogi import FedYogi

STRATEGIES = Registry("federated.server", "strategy", {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
})

__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "Strategy",
]
