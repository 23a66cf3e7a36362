"""A secure-aggregation round left with one update is a short round (retried, then a clear
failure), never a sum of one: before, SecAgg+ stopped with `threshold = 1` (exit 2, mid-run)."""

import pytest

from fedmeta.errors import FedmetaError
from fedmeta.federated.simulation import NotEnoughClients, Simulation


@pytest.mark.parametrize("secure", ["secagg", "secagg+"])
def test_one_survivor_is_a_short_round(config, secure):
    cfg = config("sinusoid", clients_per_round=4, min_clients=1, max_retries=1)
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"secure_aggregation": secure})})
    sim = Simulation(cfg)
    collected = sim.collect(1)
    keep = min(collected.messages)
    for field in (collected.messages, collected.weights, collected.reports):
        for cid in [c for c in field if c != keep]:
            del field[cid]
    with pytest.raises(NotEnoughClients):
        sim.aggregate(collected)
    sim.collect = lambda r, attempt=0: collected  # every attempt: one survivor
    with pytest.raises(FedmetaError, match="secure aggregation needs 2"):
        sim.run_round()
