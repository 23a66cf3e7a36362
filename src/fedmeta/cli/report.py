"""`fedmeta report DIR`: rebuild a run folder's plots and report.html from its files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fedmeta.errors import BadInput


def register(app: typer.Typer) -> None:
    @app.command()
    def report(run_dir: Annotated[Path, typer.Argument(help="A run folder.")]) -> None:
        """Rebuild the plots and report.html of a run folder."""
        from fedmeta.report import write_report

        if not (run_dir / "metrics.jsonl").is_file():
            raise BadInput("RUN_DIR", str(run_dir), "a run folder holding metrics.jsonl")
        print(write_report(run_dir))
