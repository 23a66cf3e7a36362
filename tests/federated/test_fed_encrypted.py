"""CKKS aggregation of parameter dicts against the plaintext weighted sum; the server's
context must not decrypt; bad input is refused before anything is encrypted."""

import numpy as np
import pytest
import tenseal as ts
import torch

from fedmeta.errors import BadInput
from fedmeta.federated import encrypted
from fedmeta.federated.encrypted import KeySetup, distribute_keys, encrypted_weighted_sum

F32_EPS = float(torch.finfo(torch.float32).eps)


@pytest.fixture(scope="module")
def setup() -> KeySetup:
    return distribute_keys()


def make_updates(n: int, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        {
            "w": torch.randn(70, 64, generator=g),  # 4480 values: two ciphertext blocks of 4096
            "b": torch.randn(64, generator=g),
            "log_lr": torch.randn((), generator=g, dtype=torch.float64),  # 0-d, float64
        }
        for _ in range(n)
    ]


def test_sum_matches_plaintext_within_reported_error(setup: KeySetup) -> None:
    updates = make_updates(10)
    weights = [float(w) for w in np.random.default_rng(1).uniform(0.1, 1.0, size=10)]
    total, weight, stats = encrypted_weighted_sum(updates, weights, setup.clients)
    reference = {k: sum(w * u[k].double() for u, w in zip(updates, weights)) for k in updates[0]}
    error = stats.max_abs_error
    assert 0 < error < 1e-6  # CKKS is approximate; scale 2^40 keeps ten clients' error tiny
    assert abs(weight - sum(weights)) <= error
    assert abs(total["log_lr"].item() - reference["log_lr"].item()) <= error  # float64: no rounding
    for k in ("w", "b"):  # float32 outputs: the reported error plus one rounding
        bound = error + F32_EPS * reference[k].abs()
        assert torch.all((total[k].double() - reference[k]).abs() <= bound), k
    partial = sum(w * u["w"].double() for u, w in zip(updates[:9], weights[:9]))
    assert not torch.allclose(total["w"].double(), partial, atol=1e-3)  # every client counted
    assert len(stats.client_bytes) == len(stats.client_seconds) == 10
    assert stats.aggregate_bytes > 0 and stats.client_bytes_sent_per_client() > 0


def test_names_shapes_and_dtypes_are_kept(setup: KeySetup) -> None:
    updates = make_updates(2)
    total, _, _ = encrypted_weighted_sum(updates, [1.0, 1.0], setup.clients)
    assert list(total) == list(updates[0])
    for k, t in updates[0].items():
        assert total[k].shape == t.shape and total[k].dtype == t.dtype, k


def test_server_path_holds_no_key_and_cannot_decrypt(setup: KeySetup, monkeypatch) -> None:
    seen, server_add = [], encrypted.server_add

    def spy(server_context, updates):
        seen.append(server_context)
        return server_add(server_context, updates)

    monkeypatch.setattr(encrypted, "server_add", spy)
    total, _, _ = encrypted_weighted_sum(make_updates(3), [1.0] * 3, setup.clients)
    (server_bytes,) = seen
    assert server_bytes == setup.server_context
    server = ts.context_from(server_bytes)
    assert not server.is_private() and not server.has_public_key()
    row = np.concatenate([total["w"].reshape(-1).numpy(), [1.0]])
    aggregate = server_add(server_bytes, [setup.clients.encrypt(row)] * 2)
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server, aggregate[0]).decrypt()
    np.testing.assert_allclose(setup.clients.decrypt_sum(aggregate), 2 * row, atol=1e-6)


def test_a_client_loading_the_secret_context_decrypts_the_dealers_sum(setup: KeySetup) -> None:
    other = encrypted.CKKSKeys.from_secret_context(setup.clients.secret_context_bytes())
    block = setup.clients.encrypt(np.arange(4.0))
    summed = encrypted.server_add(setup.server_context, [block, block])
    np.testing.assert_allclose(other.decrypt_sum(summed), 2 * np.arange(4.0), atol=1e-6)
    assert setup.secret_context_bytes > 100 * len(setup.server_context)  # keys stay with clients


@pytest.mark.parametrize(
    ("updates", "weights", "match"),
    [
        ([], [], "at least one"),
        (make_updates(2), [1.0], "one weight per update"),
        (make_updates(2), [1.0, 0.0], "weights > 0"),
        (make_updates(2), [1.0, float("nan")], "weights > 0"),
        ([make_updates(1)[0], {"w": torch.zeros(3)}], [1.0, 1.0], "shaped like update 0"),
        (
            make_updates(10),
            [3e4] * 10,
            "CKKS range",
        ),  # each row encodes; the sum could wrap past 2^18
    ],
)
def test_bad_input_raises(setup: KeySetup, updates, weights, match) -> None:
    with pytest.raises(BadInput, match=match):
        encrypted_weighted_sum(updates, weights, setup.clients)
