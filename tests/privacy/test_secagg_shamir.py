"""Shamir sharing against an independent Lagrange evaluation over the same prime field."""

import random

import pytest

from fedmeta.errors import BadInput
from fedmeta.privacy.secagg.shamir import (
    PRIME,
    NotEnoughShares,
    Share,
    _interpolate_at_zero,
    reconstruct,
    split,
)


def _lagrange_eval(points: list[tuple[int, int]], x: int) -> int:
    """Reference: value at x of the unique polynomial through `points`, mod PRIME."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        term = yi
        for j, (xj, _) in enumerate(points):
            if j != i:
                term = term * (x - xj) * pow(xi - xj, PRIME - 2, PRIME) % PRIME
        total += term
    return total % PRIME


@pytest.mark.parametrize("length", [0, 1, 16, 31, 32, 33, 100])
def test_any_t_subset_reconstructs(length: int) -> None:
    r = random.Random(length)
    secret = r.randbytes(length)
    n, t = 9, 5
    shares = split(secret, n, t)
    for _ in range(20):
        assert reconstruct(r.sample(shares, t), t) == secret
    assert reconstruct(shares, t) == secret


def test_threshold_one_and_n() -> None:
    secret = bytes(range(40))
    assert all(reconstruct([s], 1) == secret for s in split(secret, 4, 1))
    assert reconstruct(split(secret, 4, 4), 4) == secret


def test_fewer_than_t_shares_raise() -> None:
    shares = split(b"x" * 32, 7, 4)
    with pytest.raises(NotEnoughShares, match="need 4"):
        reconstruct(shares[:3], 4)
    with pytest.raises(NotEnoughShares):  # duplicates count once
        reconstruct([shares[0]] * 3 + [shares[1]], 4)


def test_t_minus_one_shares_do_not_pin_the_secret() -> None:
    r = random.Random(7)
    t = 4
    secret = r.randbytes(31)  # one chunk
    shares = split(secret, 6, t)[: t - 1]
    assert _interpolate_at_zero(shares) != secret
    # the same t-1 shares are consistent with any other secret: complete them with a share
    # of the polynomial through (0, other) and reconstruction yields `other`
    other = r.randbytes(31)
    points = [(0, int.from_bytes(other, "big"))] + [(s.index, s.values[0]) for s in shares]
    forged = Share(t, 31, (_lagrange_eval(points, t),))
    assert reconstruct(shares + [forged], t) == other


def test_shares_evaluate_one_polynomial_of_degree_t_minus_1() -> None:
    t = 3
    shares = split(b"\x05" * 31, 6, t)
    points = [(s.index, s.values[0]) for s in shares[:t]]
    for s in shares[t:]:
        assert _lagrange_eval(points, s.index) == s.values[0]
    assert _lagrange_eval(points, 0) == int.from_bytes(b"\x05" * 31, "big")


def test_share_bytes_round_trip_and_reject_garbage() -> None:
    share = split(b"secret" * 10, 3, 2)[1]
    assert Share.from_bytes(share.to_bytes()) == share
    with pytest.raises(BadInput):
        Share.from_bytes(share.to_bytes()[:-1])
    with pytest.raises(BadInput):
        split(b"s", 3, 4)
