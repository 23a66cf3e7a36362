"""A secure-aggregation round left with one update is a short round (retried, then a clear
failure), never a sum of one: before, SecAgg+ stopped with `threshold = 1` (exit 2, mid-run)."""

import pytest

from fedmeta.errors import FedmetaError
from fedmeta.federated.runtime import Runtime


@pytest.mark.parametrize("secure", ["secagg", "secagg+"])
def test_one_survivor_is_a_short_round(config, secure):
    cfg = config("sinusoid", clients_per_round=4, min_clients=1, max_retries=1)
    cfg = cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"secure_aggregation": secure})})
    runtime = Runtime(cfg)
    replies = runtime.exchange(1)
    keep = min(replies.replies)
    replies.replies = {keep: replies.replies[keep]}
    admitted = runtime.server.admission(replies, 1, runtime.params)
    assert admitted.usable == 1 < runtime.server.min_usable == 2  # the round does not aggregate it
    runtime.transport.exchange = lambda *args: replies  # every attempt: one survivor
    with pytest.raises(FedmetaError, match="secure aggregation needs 2"):
        runtime.run_round()
