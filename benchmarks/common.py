"""Helpers shared by the meta-learning benchmarks: timing and plain-text tables."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence


def seconds_per_call(fn: Callable[[], object], calls: int) -> float:
    """Wall-clock seconds of one call of `fn`, averaged over `calls` back-to-back calls."""
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def interleaved_medians(
    fns: dict[str, Callable[[], object]], calls: int, repeats: int
) -> dict[str, float]:
    """Median seconds per call of each function, timed in rounds that visit every function
    once, so a slow spell of the machine (other processes on its cores) hits all of them."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(seconds_per_call(fn, calls))
    return {name: statistics.median(s) for name, s in samples.items()}


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A left-aligned text table (also valid Markdown)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"  # noqa: E731
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))
