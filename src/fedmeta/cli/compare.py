"""`fedmeta compare RUN_OR_SWEEP... [--html FILE]`: runs, seeds and sweep cells side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def compare(
        folders: Annotated[list[Path], typer.Argument(help="Run folders, --seeds folders or --sweep folders.")],
        html: Annotated[Path | None, typer.Option(help="Also write a comparison report: one HTML file.")] = None,
    ) -> None:
        """Compare runs, seeds and sweep cells: the config keys that differ, final figures, ε, bytes, seconds."""
        from fedmeta.compare import compare_table, entries, print_table, write_html

        found = entries(folders)
        headers, rows = compare_table(found)
        print_table(headers, rows)
        if html is not None:
            print(f"comparison report: {write_html(found, headers, rows, html)}")
