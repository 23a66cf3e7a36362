"""Secure aggregation over Flower messages (four exchanges per round), handlers called
directly: the deployed secure aggregate equals the plaintext weighted mean of the clients'
updates and the in-process secure aggregate, also when a client drops out before or after
masking; below threshold the round aborts; the node's secrets never reach the server."""

import numpy as np
import pytest
import torch

from fedmeta.deploy.messages import TRAIN
from fedmeta.deploy.secagg import MASKED_INPUT, SECAGG, SHARE_KEYS, UNMASK
from fedmeta.errors import FedmetaError
from fedmeta.federated.aggregation import build_aggregation
from fedmeta.federated.dp_fedavg import ClientLevelDP


@pytest.mark.parametrize("scheme", ["secagg", "secagg+"])
@pytest.mark.parametrize(("silent", "included"), [({}, {0, 1, 2, 3}), ({UNMASK: {1}}, {0, 1, 2, 3}),
                                                  ({MASKED_INPUT: {1}}, {0, 2, 3})])
def test_secure_aggregate_is_the_weighted_mean(config, grid_factory, deployed, plaintext_updates, scheme, silent,
                                               included):
    """Client 1 silent from unmask on (after masking: its input stays in the sum) or from
    masked_input on (before: its pairwise masks are removed from the others' inputs)."""
    cfg = config("sinusoid", n_clients=4, clients_per_round=4, min_clients=2, strategy="fedavg", server_lr=1.0,
                 privacy={"secure_aggregation": scheme, "secagg_clip": 2.0})
    grid = grid_factory(4, silent=silent)
    runtime = deployed(cfg, grid, min_nodes=4, wait=1)
    before = {k: v.clone() for k, v in runtime.params.items()}
    info = runtime.run_round().row
    assert info["clients"] == len(included) and info["secagg_included"] == len(included)
    kinds = [m.metadata.message_type for m in grid.sent if m.metadata.message_type != "query"]
    assert [kinds.count(k) for k in (TRAIN, SHARE_KEYS, MASKED_INPUT, UNMASK)] == [4, 4, 4, len(included)]
    clear = {c: v for c, v in plaintext_updates(grid).items() if c in included}
    total = sum(w for _, w, _ in clear.values())
    for name, value in runtime.params.items():
        mean = sum(u[name].double() * w for u, w, _ in clear.values()) / total  # plaintext reference
        torch.testing.assert_close(value.double() - before[name].double(), mean, rtol=0, atol=1e-7)
    ids = sorted(clear)  # the in-process secure sum of the same updates
    local = build_aggregation(cfg, None)([clear[c][0] for c in ids], [clear[c][1] for c in ids], [0.0] * len(ids),
                                         np.random.default_rng(0)).delta
    for name, value in runtime.params.items():
        torch.testing.assert_close(value.double() - before[name].double(), local[name].double(), rtol=0, atol=1e-7)


@pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")
def test_central_dp_with_adaptive_clipping_matches_the_in_process_aggregation(config, grid_factory, deployed,
                                                                             plaintext_updates):
    """DP-FedAvg: unit weights, the clip count summed as one more masked coordinate, central
    noise and the clip-norm step on the server, exactly as the in-process aggregation does."""
    privacy = {"dp": "central", "noise_multiplier": 0.3, "clip_norm": 0.05, "clipping": "adaptive",
               "noise_seed": 11, "secure_aggregation": "secagg+"}
    cfg = config("sinusoid", n_clients=4, clients_per_round=4, min_clients=1, strategy="fedavg", server_lr=1.0,
                 privacy=privacy)
    grid = grid_factory(4)
    runtime = deployed(cfg, grid, min_nodes=4, wait=1)
    server = runtime.server
    before = {k: v.clone() for k, v in runtime.params.items()}
    dp = ClientLevelDP.from_config(cfg, server.sampler.rate, server.client_dp.expected_clients)  # its own clip state
    reference = build_aggregation(cfg, dp)
    runtime.run_round()
    clear = plaintext_updates(grid)
    ids = sorted(clear)
    delta = reference([clear[c][0] for c in ids], [clear[c][1] for c in ids], [clear[c][2] for c in ids],
                      server.noise_rng(1)).delta
    for name, value in runtime.params.items():
        torch.testing.assert_close(value.double() - before[name].double(), delta[name].double(), rtol=0, atol=1e-6)
    assert server.clip_norm == pytest.approx(dp.clip_norm, rel=1e-6)
    assert dp.clip_norm != privacy["clip_norm"]


def test_below_threshold_the_round_aborts_and_is_retried(config, grid_factory, deployed, exchange):
    cfg = config("sinusoid", n_clients=3, clients_per_round=3, min_clients=1, max_retries=1,
                 privacy={"secure_aggregation": "secagg"})
    runtime = deployed(cfg, grid_factory(3, silent={SHARE_KEYS: {0, 1}}), min_nodes=3, wait=1)
    replies = exchange(runtime, 1)
    assert "secure aggregation aborted in SHARE_KEYS" in replies.dropped[2]
    assert replies.summed is not None and replies.summed.total is None  # no sum: nothing to aggregate
    admitted = runtime.server.admission(replies, 1, runtime.params)
    assert admitted.usable == 0 < runtime.server.min_usable
    with pytest.raises(FedmetaError, match="after 2 attempts"):
        runtime.run_round()


def test_node_secrets_never_reach_the_server(config, grid_factory, deployed):
    """Client 1 keeps its state (it never answers unmask): its seed and its summand appear in
    no message the server received."""
    cfg = config("sinusoid", n_clients=3, clients_per_round=3, min_clients=2, privacy={"secure_aggregation": "secagg"})
    grid = grid_factory(3, silent={UNMASK: {1}})
    deployed(cfg, grid, min_nodes=3, wait=1).run_round()
    state = grid.contexts[101].state
    seed = bytes(state[SECAGG]["seed"])
    row = torch.cat([t.reshape(-1) for t in state["fedmeta.secagg.row"].to_torch_state_dict().values()])
    received = b"".join(bytes(v) for r in grid.replies for rec in r.content.config_records.values()
                        for v in rec.values() if isinstance(v, bytes))
    assert seed not in received and row.numpy().tobytes()[:16] not in received
