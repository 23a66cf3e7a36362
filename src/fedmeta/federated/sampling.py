"""Where a round's randomness comes from, and which clients it samples.

Every random draw of round r comes from a generator seeded by (seed, r, attempt, stream),
so a run resumed from its checkpoint repeats exactly what an uninterrupted run would do.
Streams: 0 the round (sampling, then the in-process clients' fates, sinusoid regions'
episodes drawn in one go, attacks and compression), 1 and 2 the evaluation episodes
(held-out and training clients; client i's from (seed, 0, i, stream)), 3 the choice of
malicious clients, 4 + c client c's own stream: its episodes, in-process as on its own
machine, so a deployed run draws what the simulation draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

ROUND, EVAL_TEST, EVAL_TRAIN, ATTACKERS, CLIENT = 0, 1, 2, 3, 4


def generator(seed: int, round_: int, attempt: int = 0, stream: int = ROUND) -> torch.Generator:
    seq = np.random.SeedSequence([seed, round_, attempt, stream])
    return torch.Generator().manual_seed(int(seq.generate_state(1, np.uint64)[0] >> 1))


def evaluation_generator(seed: int, split: str, index: int) -> torch.Generator:
    """Evaluation client `index`'s episode stream (`split` "test": the held-out clients,
    "train": the training clients), the same on the server and on the client's machine."""
    return generator(seed, 0, index, EVAL_TEST if split == "test" else EVAL_TRAIN)


def expected_clients(per_round: int, n_clients: int) -> tuple[float, float]:
    """(q, m): the sampling rate and the expected number of clients per round, q·N."""
    rate = min(1.0, per_round / n_clients)
    return rate, rate * n_clients


@dataclass(frozen=True)
class Sampler:
    """A fixed-size sample of `per_round` clients, or under client-level DP Poisson sampling
    at rate q (what the accountant assumes)."""

    n_clients: int
    per_round: int
    poisson: bool

    @property
    def rate(self) -> float:
        return expected_clients(self.per_round, self.n_clients)[0]

    def sample(self, gen: torch.Generator) -> list[int]:
        if self.poisson:
            picked = torch.rand(self.n_clients, generator=gen) < self.rate
            return picked.nonzero().squeeze(1).tolist()
        order = torch.randperm(self.n_clients, generator=gen)
        return sorted(order[: self.per_round].tolist())
