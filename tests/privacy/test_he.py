"""CKKS aggregation against the plaintext sum; the server context must not decrypt."""

import numpy as np
import pytest
import tenseal as ts

from fedmeta.errors import BadInput
from fedmeta.privacy.he import CKKSKeys, CKKSParams, server_add


@pytest.fixture(scope="module")
def keys() -> CKKSKeys:
    return CKKSKeys.generate()


def test_ten_client_sum_matches_plaintext(keys: CKKSKeys) -> None:
    rng = np.random.default_rng(0)
    updates = rng.normal(0, 1, size=(10, 3 * keys.slots + 17))  # (clients, dim): 4 blocks
    peer = CKKSKeys.from_secret_context(keys.secret_context_bytes())  # another client
    encrypted = [peer.encrypt(u) for u in updates]
    assert all(len(e) == 4 for e in encrypted)
    aggregate = server_add(keys.server_context_bytes(), encrypted)
    total = keys.decrypt_sum(aggregate)
    assert total.shape == (updates.shape[1],)
    # scale 2^40: encoding error per value ~ 1e-9..1e-8; ten of them stay far below 1e-5
    np.testing.assert_allclose(total, updates.sum(axis=0), rtol=0, atol=1e-5)
    assert not np.allclose(total, updates[:9].sum(axis=0), atol=1e-3)


def test_server_context_holds_no_key_and_cannot_decrypt(keys: CKKSKeys) -> None:
    server_context = ts.context_from(keys.server_context_bytes())
    assert not server_context.is_private() and not server_context.has_secret_key()
    assert not server_context.has_public_key()
    block = keys.encrypt(np.arange(5.0))[0]
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server_context, block).decrypt()
    summed = server_add(keys.server_context_bytes(), [[block], [block]])
    with pytest.raises(ValueError, match="secret"):
        ts.ckks_vector_from(server_context, summed[0]).decrypt()
    np.testing.assert_allclose(keys.decrypt_sum(summed), 2 * np.arange(5.0), atol=1e-6)


def test_server_refuses_a_secret_context_and_ragged_updates(keys: CKKSKeys) -> None:
    a, b = keys.encrypt(np.ones(10)), keys.encrypt(np.ones(keys.slots + 1))
    with pytest.raises(BadInput, match="secret key"):
        server_add(keys.secret_context_bytes(), [a])
    with pytest.raises(BadInput, match="block counts"):
        server_add(keys.server_context_bytes(), [a, b])


def test_parameters_follow_the_he_standard() -> None:
    with pytest.raises(BadInput, match="128-bit"):
        CKKSParams(8192, (60, 60, 60, 60))  # 240 bits > 218 allowed for N = 8192
    with pytest.raises(BadInput):
        CKKSParams(3000)
    assert CKKSParams(16384, (60, 40, 40, 40, 40, 60)).slots == 8192
