"""Where a round's randomness comes from, and which clients it samples.

Every random draw of round r comes from a generator seeded by (seed, r, attempt, stream),
so a run resumed from its checkpoint repeats exactly what an uninterrupted run would do.
Streams: 0 the round (sampling, then the in-process clients' fates, attacks and
compression; the clients' episodes too in runs begun before clients had streams of their
own), 1 and 2 the evaluation episodes
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
    return generators(seed, round_, attempt, [stream])[0]


def generators(seed: int, round_: int, attempt: int, streams: list[int]) -> list[torch.Generator]:
    """`generator(seed, round_, attempt, s)` for each of `streams`, seeded from NumPy's
    `SeedSequence([seed, round_, attempt, s]).generate_state(1, uint64)`, here computed for
    all streams at once (`_seed_states`: a round's thousand clients in one pass instead of
    a thousand SeedSequence objects)."""
    return [torch.Generator().manual_seed(int(v >> 1)) for v in _seed_states([seed, round_, attempt], streams)]


# NumPy's SeedSequence (O'Neill's seed_seq design, pool of 4 words), vectorized over the last entropy word
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_L, _MIX_R, _MASK32, _POOL = 0xCA01F9DD, 0x4973F715, 0xFFFFFFFF, 4


def _words(n: int) -> list[int]:
    """An entropy integer as SeedSequence reads it: 32-bit words, least significant first."""
    if n < 0:
        raise ValueError(f"entropy must be non-negative, got {n}")
    out = [n & _MASK32] if n == 0 else []
    while n > 0:
        out, n = [*out, n & _MASK32], n >> 32
    return out


def _seed_states(prefix: list[int], streams: list[int]) -> list[int]:
    """SeedSequence(prefix + [s]).generate_state(1, np.uint64)[0] for each s in `streams`."""
    if any(s > _MASK32 for s in streams):  # several words: entropy lengths differ per stream
        return [int(np.random.SeedSequence([*prefix, s]).generate_state(1, np.uint64)[0]) for s in streams]
    n = len(streams)
    entropy = [np.full(n, w, np.uint32) for v in prefix for w in _words(v)] + [np.asarray(streams, np.uint32)]
    const = _INIT_A

    def hashmix(value: np.ndarray) -> np.ndarray:
        nonlocal const
        value = value ^ np.uint32(const)
        const = (const * _MULT_A) & _MASK32
        value = value * np.uint32(const)
        return value ^ (value >> np.uint32(16))

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        out = np.uint32(_MIX_L) * x - np.uint32(_MIX_R) * y
        return out ^ (out >> np.uint32(16))

    pool = [hashmix(entropy[i] if i < len(entropy) else np.zeros(n, np.uint32)) for i in range(_POOL)]
    for src in range(_POOL):
        for dst in range(_POOL):
            if src != dst:
                pool[dst] = mix(pool[dst], hashmix(pool[src]))
    for src in range(_POOL, len(entropy)):
        for dst in range(_POOL):
            pool[dst] = mix(pool[dst], hashmix(entropy[src]))
    const, state = _INIT_B, []
    for word in pool[:2]:  # generate_state: two 32-bit words make the uint64, low word first
        value = word ^ np.uint32(const)
        const = (const * _MULT_B) & _MASK32
        value = value * np.uint32(const)
        state.append((value ^ (value >> np.uint32(16))).astype(np.uint64))
    return [int(v) for v in state[0] | (state[1] << np.uint64(32))]


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
