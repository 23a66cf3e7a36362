"""SecAgg / SecAgg+ against the plaintext sum, with dropouts at every phase."""

import random

import numpy as np
import pytest

from fedmeta.errors import ConfigError
from fedmeta.privacy.secagg import protocol
from fedmeta.privacy.secagg.encoding import FixedPointCodec
from fedmeta.privacy.secagg.graph import degree_for, min_threshold, neighbours
from fedmeta.privacy.secagg.messages import ShareDelivery, UnmaskRequest
from fedmeta.privacy.secagg.protocol import (
    Phase,
    ProtocolViolation,
    SecAggAbort,
    SecAggClient,
    SecAggConfig,
    SecAggServer,
)
from fedmeta.privacy.secagg.simulate import secure_sum

DIM = 200


def _inputs(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, DIM) for _ in range(n)]  # n x (dim,)


def _check(inputs, threshold, dropouts=None, **kw) -> frozenset[int]:
    total, stats = secure_sum(inputs, threshold, dropouts, rng=random.Random(1), **kw)
    plain = np.sum([inputs[i] for i in stats.included], axis=0)
    resolution = FixedPointCodec(
        clip=1.0, n_clients=len(inputs), bits=kw.get("bits", 32)
    ).resolution
    np.testing.assert_allclose(total, plain, rtol=0, atol=len(inputs) * resolution)
    return stats.included


@pytest.fixture
def reconstructions(monkeypatch) -> list[int]:
    """Counts every Shamir reconstruction the server performs."""
    calls: list[int] = []
    real = protocol.reconstruct

    def spy(shares, t):
        calls.append(t)
        return real(shares, t)

    monkeypatch.setattr(protocol, "reconstruct", spy)
    return calls


def test_no_dropouts_equals_plaintext_sum(reconstructions) -> None:
    assert _check(_inputs(8), 5) == frozenset(range(8))
    assert len(reconstructions) == 8  # one self-mask seed per client, no private keys


@pytest.mark.parametrize("bits", [32, 64])
def test_dropouts_in_every_phase(bits: int) -> None:
    drops = {
        Phase.ADVERTISE: {0},
        Phase.SHARE_KEYS: {1},
        Phase.MASKED_INPUT: {2, 3},
        Phase.UNMASK: {4},  # sent its masked input, then vanished
    }
    included = _check(_inputs(12), 7, drops, bits=bits)
    assert included == frozenset(range(4, 12))


def test_survivors_exactly_at_threshold() -> None:
    # 6 of 10 left to send masked inputs, all 6 needed to unmask
    assert len(_check(_inputs(10), 6, {Phase.MASKED_INPUT: {0, 1, 2, 3}})) == 6
    # all 10 masked, only 6 answer the unmasking round: 4 self masks come from shares
    assert len(_check(_inputs(10), 6, {Phase.UNMASK: {0, 1, 2, 3}})) == 10


@pytest.mark.parametrize("phase", list(Phase))
def test_below_threshold_aborts_without_reconstructing(phase, reconstructions) -> None:
    with pytest.raises(SecAggAbort, match=phase.name):
        secure_sum(_inputs(10), 6, {phase: {0, 1, 2, 3, 4}}, rng=random.Random(2))
    assert reconstructions == []


def test_secagg_plus_sums_correctly_with_dropouts() -> None:
    n, degree = 40, 10
    drops = {Phase.SHARE_KEYS: {3}, Phase.MASKED_INPUT: {5, 17}, Phase.UNMASK: {8, 30}}
    included = _check(_inputs(n), 7, drops, neighbourhood="secagg+", degree=degree)
    assert included == frozenset(range(n)) - {3, 5, 17}


def test_secagg_plus_graph_is_regular_and_symmetric() -> None:
    graph = neighbours(range(50), "secagg+", 8, b"seed")
    assert all(len(nb) == 8 and u not in nb for u, nb in graph.items())
    assert all(u in graph[v] for u, nb in graph.items() for v in nb)
    assert graph != neighbours(range(50), "secagg+", 8, b"other seed")


def _run_to_unmask(n: int = 4, threshold: int = 3, update=None):
    """Clients and server after the masked-input round, plus the unmask requests."""
    config = SecAggConfig(tuple(range(n)), threshold, DIM if update is None else len(update), 1.0)
    server = SecAggServer(config)
    rng = random.Random(3)
    clients = {i: SecAggClient(config, i, _randbytes=rng.randbytes) for i in range(n)}
    out = server.collect_keys({i: c.advertise() for i, c in clients.items()})
    out = server.collect_shares({i: c.share_keys(out[i]) for i, c in clients.items()})
    x = np.zeros(config.dim) if update is None else update
    masked = {i: c.masked_input(out[i], x) for i, c in clients.items()}
    return config, clients, server, masked, server.collect_masked(masked)


def test_client_refuses_both_secrets_of_one_peer() -> None:
    _, clients, _, _, _ = _run_to_unmask()
    both = UnmaskRequest(frozenset({0, 1}), frozenset({1})).to_bytes()
    with pytest.raises(ProtocolViolation, match="both"):
        clients[0].unmask(both)
    claims_self_dropped = UnmaskRequest(frozenset({2}), frozenset({1})).to_bytes()
    with pytest.raises(ProtocolViolation, match="not a survivor"):
        clients[1].unmask(claims_self_dropped)


def test_client_answers_the_unmask_round_only_once() -> None:
    _, clients, _, _, requests = _run_to_unmask()
    clients[0].unmask(requests[0])
    with pytest.raises(ProtocolViolation):
        clients[0].unmask(UnmaskRequest(frozenset({0}), frozenset({1})).to_bytes())


def test_server_rejects_a_forged_sender() -> None:
    config = SecAggConfig((0, 1, 2), 2, 4, 1.0)
    server = SecAggServer(config)
    advert = SecAggClient(config, 1).advertise()
    with pytest.raises(ProtocolViolation):
        server.collect_keys({0: advert})


def test_masked_input_is_uncorrelated_with_a_ramp() -> None:
    ramp = np.linspace(-1, 1, 20_000)
    config, _, _, masked, _ = _run_to_unmask(update=ramp)
    y = np.frombuffer(masked[0][9:], dtype=config.codec.dtype).astype(np.float64)  # tag+id+len
    encoded = config.codec.encode(ramp).view(np.int32).astype(np.float64)
    assert np.corrcoef(encoded, ramp)[0, 1] > 0.999  # the plain encoding would be caught
    assert abs(np.corrcoef(y, ramp)[0, 1]) < 0.03  # sd of a null correlation ~ 0.007


def test_stats_count_the_serialized_bytes() -> None:
    _, clients, server, masked, _ = _run_to_unmask()
    assert clients[0].stats.bytes_sent[Phase.MASKED_INPUT] == len(masked[0]) == 9 + 4 * DIM
    assert server.stats.bytes_received[Phase.MASKED_INPUT] == sum(map(len, masked.values()))
    assert all(s > 0 for s in clients[0].stats.seconds.values())


def test_threshold_must_exceed_half_the_neighbourhood() -> None:
    with pytest.raises(ConfigError, match="threshold"):
        SecAggConfig(tuple(range(10)), 5, 4, 1.0)
    with pytest.raises(ConfigError, match="degree"):
        SecAggConfig(tuple(range(10)), 3, 4, 1.0, neighbourhood="secagg+", degree=3)


@pytest.mark.parametrize(("n", "rate"), [(100, 0.1), (500, 0.3), (1000, 0.05)])
def test_degree_for_is_the_smallest_meeting_the_failure_bound(n: int, rate: float) -> None:
    binom = pytest.importorskip("scipy.stats").binom
    k = degree_for(n, rate, failure=1e-3)

    def failure(k: int) -> float:  # P(some client keeps fewer than a majority of holders)
        return n * binom.cdf(min_threshold(k) - 1, k, 1 - rate)

    assert k % 2 == 0 and failure(k) <= 1e-3 < failure(k - 2)


def test_a_tampered_share_is_refused_at_unmasking() -> None:
    config = SecAggConfig((0, 1, 2), 2, 4, 1.0)
    server = SecAggServer(config)
    clients = {i: SecAggClient(config, i) for i in range(3)}
    out = server.collect_keys({i: c.advertise() for i, c in clients.items()})
    out = server.collect_shares({i: c.share_keys(out[i]) for i, c in clients.items()})
    delivery = ShareDelivery.from_bytes(out[0]).ciphertexts
    delivery[1] = delivery[1][:-1] + bytes([delivery[1][-1] ^ 1])  # flip one tag bit
    out[0] = ShareDelivery(delivery).to_bytes()
    masked = {i: c.masked_input(out[i], np.zeros(4)) for i, c in clients.items()}
    requests = server.collect_masked(masked)
    with pytest.raises(ProtocolViolation, match="authentication"):
        clients[0].unmask(requests[0])
