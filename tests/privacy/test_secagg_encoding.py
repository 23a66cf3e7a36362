"""Fixed-point ring encoding and the AES-CTR mask expansion."""

import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from fedmeta.errors import BadInput
from fedmeta.privacy.secagg import prg
from fedmeta.privacy.secagg.encoding import FixedPointCodec


@pytest.mark.parametrize("bits", [32, 64])
def test_ring_sum_decodes_to_the_float_sum(bits: int) -> None:
    rng = np.random.default_rng(bits)
    n, clip = 50, 2.0
    codec = FixedPointCodec(clip=clip, n_clients=n, bits=bits)
    xs = rng.uniform(-3, 3, size=(n, 1000))  # (clients, dim), partly beyond the clip
    total = np.zeros(1000, dtype=codec.dtype)
    for x in xs:
        total += codec.encode(x)
    expected = np.clip(xs, -clip, clip).sum(axis=0)
    np.testing.assert_allclose(codec.decode(total), expected, rtol=0, atol=n * codec.resolution)


def test_chosen_scale_is_the_largest_that_cannot_wrap() -> None:
    n, clip = 100, 1.0
    codec = FixedPointCodec(clip=clip, n_clients=n, bits=32)
    for extreme in (clip, -clip):
        total = np.zeros(4, dtype=codec.dtype)
        for _ in range(n):
            total += codec.encode(np.full(4, extreme))
        np.testing.assert_allclose(codec.decode(total), n * extreme)
    with pytest.raises(BadInput, match="cannot wrap"):
        FixedPointCodec(clip=clip, n_clients=n, bits=32, scale=2 * codec.scale)


def test_overflow_and_bad_values_raise() -> None:
    with pytest.raises(BadInput, match="scale"):
        FixedPointCodec(clip=1.0, n_clients=3, bits=32, scale=2.0**30)
    with pytest.raises(BadInput):
        FixedPointCodec(clip=1.0, n_clients=2**31, bits=32)
    with pytest.raises(BadInput):
        FixedPointCodec(clip=1.0, n_clients=2, bits=16)
    with pytest.raises(BadInput):
        FixedPointCodec(clip=1.0, n_clients=2).encode(np.array([0.0, np.nan]))


def test_prg_is_aes256_ctr_from_a_zero_counter() -> None:
    seed = bytes(range(32))
    blocks = b"".join(i.to_bytes(16, "big") for i in range(4))  # counter blocks 0..3
    ecb = Cipher(algorithms.AES(seed), modes.ECB()).encryptor()
    reference = np.frombuffer(ecb.update(blocks) + ecb.finalize(), dtype="<u4")
    np.testing.assert_array_equal(prg.expand(seed, 16, np.uint32), reference)
    assert prg.expand(seed, 8, np.uint64).tobytes() == reference.tobytes()


def test_prg_output_looks_uniform_and_depends_on_the_seed() -> None:
    a = prg.expand(b"\x01" * 32, 100_000, np.uint32)
    b = prg.expand(b"\x02" * 32, 100_000, np.uint32)
    assert not np.array_equal(a, b)
    assert abs(a.mean() / 2**32 - 0.5) < 0.005  # sd of the mean is 0.29/sqrt(1e5) ~ 0.001
    with pytest.raises(BadInput):
        prg.expand(b"short", 4, np.uint32)
