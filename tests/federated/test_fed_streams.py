"""The per-client streams: a round's generators, seeded in one vectorized pass, are the
ones NumPy's own SeedSequence seeds (the reference), for any seed, round, attempt and
stream, including entropy words past 32 bits."""

import random

import numpy as np
import pytest
import torch

from fedmeta.federated.sampling import CLIENT, generator, generators


def reference(seed: int, round_: int, attempt: int, stream: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, round_, attempt, stream]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state >> 1))


@pytest.mark.parametrize("trial", range(40))
def test_a_rounds_generators_are_seed_sequences(trial):
    rng = random.Random(trial)
    big = (0, 1, 2**31, 2**32 - 1, 2**32, 2**40 + 5, 2**64 - 1)
    seed, round_, attempt = (rng.choice([*big, rng.randrange(2**64)]) for _ in range(3))
    streams = [CLIENT + rng.randrange(10_000) for _ in range(30)] + [0, 2**32 - 1] + ([2**33 + 1] if trial % 4 == 0 else [])
    for got, s in zip(generators(seed, round_, attempt, streams), streams, strict=True):
        assert got.initial_seed() == reference(seed, round_, attempt, s).initial_seed()
    assert generator(seed, round_, attempt, streams[0]).initial_seed() == reference(seed, round_, attempt,
                                                                                    streams[0]).initial_seed()


def test_negative_entropy_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        generators(-1, 0, 0, [CLIENT])
