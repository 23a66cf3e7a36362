"""Progress on stderr: a rich bar on a terminal, plain log lines anywhere else."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

MAX_LINES = 100  # log lines of one progress, at most (plus the last step's)


@contextmanager
def progress_bar(total: int, done: int, label: str, show: bool = True) -> Iterator[Callable[..., None]]:
    """Yields `advance(**figures)`: one step forward, figures shown as `name=value`."""
    console = Console(stderr=True)
    if not show:
        yield lambda **figures: None
    elif console.is_terminal or console.is_jupyter:
        with _bar(console, total, done, label) as advance:
            yield advance
    else:
        yield _log_lines(total, done, label)


@contextmanager
def _bar(console: Console, total: int, done: int, label: str) -> Iterator[Callable[..., None]]:
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[figures]}"),
    )
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done, figures="")

        def advance(**figures: float) -> None:
            bar.update(task, advance=1, figures=_shown(figures, "  "))

        yield advance


def _log_lines(total: int, done: int, label: str) -> Callable[..., None]:
    """`advance` that prints `label step/total  figures  seconds` on stderr, for every step
    of a short run and every `total // MAX_LINES`-th of a long one."""
    every, t0, step = max(1, total // MAX_LINES), time.perf_counter(), done

    def advance(**figures: float) -> None:
        nonlocal step
        step += 1
        if step % every == 0 or step == total:
            parts = (f"{label} {step}/{total}", _shown(figures, " "), f"{time.perf_counter() - t0:.1f} s")
            print("  ".join(p for p in parts if p), file=sys.stderr, flush=True)

    return advance


def _shown(figures: dict[str, float], sep: str) -> str:
    return sep.join(f"{k}={v:.4g}" for k, v in figures.items())
