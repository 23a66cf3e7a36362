"""A rich progress bar that shows the latest figures next to the count."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(total: int, done: int, label: str, show: bool = True) -> Iterator[Callable[..., None]]:
    """Yields `advance(**figures)`: one step forward, figures shown as `name=value`."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[figures]}"),
    )
    with Progress(*columns, disable=not show, transient=False) as bar:
        task = bar.add_task(label, total=total, completed=done, figures="")

        def advance(**figures: float) -> None:
            text = "  ".join(f"{k}={v:.4g}" for k, v in figures.items())
            bar.update(task, advance=1, figures=text)

        yield advance
