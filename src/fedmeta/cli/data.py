"""`fedmeta data download omniglot`, `fedmeta data info` and `fedmeta data schema CONFIG`:
fetch and inspect datasets, print a table's schema."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from fedmeta.errors import DataError

DATA_DIR_HELP = "Folder holding omniglot/ (or the omniglot folder itself); default $FEDMETA_DATA."
DataDir = Annotated[Path | None, typer.Option("--data-dir", help=DATA_DIR_HELP)]
Parts = Annotated[
    list[str] | None, typer.Option("--part", help="Omniglot archive to fetch (repeatable).")
]


def download(
    dataset: Annotated[str, typer.Argument(help="Dataset to fetch: omniglot.")],
    data_dir: DataDir = None,
    part: Parts = None,
) -> None:
    """Download a dataset from its official source."""
    from fedmeta.data.omniglot import _URL_PATHS, download_omniglot

    if dataset != "omniglot":
        raise DataError("DATASET", dataset, "omniglot (digits ship with scikit-learn)")
    for name in part or ():
        if name not in _URL_PATHS:
            raise DataError("--part", name, f"one of {', '.join(_URL_PATHS)}")
    base = data_dir or os.environ.get("FEDMETA_DATA")
    if not base:
        raise DataError("--data-dir", None, "a folder to download into, or set FEDMETA_DATA")
    dest = Path(base).expanduser()
    dest = dest if dest.name == "omniglot" else dest / "omniglot"
    field = "--data-dir" if data_dir else "FEDMETA_DATA"
    try:  # a folder that can take the archives, before any download
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(field, str(base), f"a folder to download into ({err.strerror or err}: {dest})") from None
    for path in download_omniglot(dest, tuple(part)) if part else download_omniglot(dest):
        typer.echo(f"{path} ({path.stat().st_size:,} bytes)")


def info(data_dir: DataDir = None) -> None:
    """Print the Omniglot alphabets and characters found, and the default split."""
    from fedmeta.data.omniglot import default_test_alphabets, load_omniglot, resolve_data_dir

    root = resolve_data_dir(None if data_dir is None else str(data_dir), field="--data-dir")
    images = load_omniglot(root)
    counts = Counter(images.alphabets)
    held_out = set(default_test_alphabets(images))
    typer.echo(f"omniglot: {root}")
    typer.echo(f"sources: {', '.join(sorted(set(images.sets)))}")
    for alphabet in sorted(counts):
        split = "test" if alphabet in held_out else "train"
        typer.echo(f"  {alphabet:<45} {counts[alphabet]:>4} characters  {split}")
    n_all, n_test = len(images.alphabets), sum(counts[a] for a in held_out)
    typer.echo(f"{len(counts)} alphabets, {n_all} characters x {images.images.shape[1]} drawers")
    typer.echo(
        f"default split: train {n_all - n_test} characters, "
        f"test {n_test} ({', '.join(sorted(held_out))})"
    )
    lake = any((root / n).exists() for n in ("all_runs.zip", "all_runs"))
    typer.echo(f"Lake et al. one-shot runs: {'present' if lake else 'absent'}")


def schema(
    config: Annotated[Path, typer.Argument(help="A table run's config (data.name = 'table').")],
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=v.")] = None,
) -> None:
    """Print the schema of a table config's files (data.clients, data.columns, data.labels) as
    TOML to put in its [data] section: what a deployed server runs on, holding no rows."""
    import tomli_w

    from fedmeta.config import load_config
    from fedmeta.data.table import resolve_schema

    cfg = load_config(config, list(set_ or []))
    if cfg.data.name != "table":
        raise DataError("data.name", cfg.data.name, "'table' (only a table has a schema to print)")
    data = resolve_schema(cfg).data.model_dump(include={"clients", "columns", "labels"}, exclude_none=True)
    typer.echo(tomli_w.dumps({"data": data}).rstrip())


def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="Fetch and inspect datasets.", no_args_is_help=True)
    data_app.command("download")(download)
    data_app.command("info")(info)
    data_app.command("schema")(schema)
    app.add_typer(data_app, name="data")
