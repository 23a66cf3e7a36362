"""Server strategies, one per file, named after the paper's algorithm."""

from fedmeta.federated.strategies.base import Strategy
from fedmeta.federated.strategies.fedadagrad import FedAdagrad
from fedmeta.federated.strategies.fedadam import FedAdam
from fedmeta.federated.strategies.fedavg import FedAvg
from fedmeta.federated.strategies.fedavgm import FedAvgM
from fedmeta.federated.strategies.fedyogi import FedYogi

STRATEGIES = {
    "fedavg": FedAvg,
    "fedavgm": FedAvgM,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedadagrad": FedAdagrad,
}

__all__ = [
    "STRATEGIES",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedAvgM",
    "FedYogi",
    "Strategy",
]
