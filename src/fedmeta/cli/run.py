"""`fedmeta run [CONFIG.toml] [--set a.b=v ...] [--out DIR] [--resume DIR]`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedmeta.cli import app
from fedmeta.errors import BadInput, FedmetaError

if TYPE_CHECKING:
    from fedmeta.rundir import RunDir


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="Run config (TOML); none = built-in demo.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=v.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this folder.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Datasets folder (else $FEDMETA_DATA).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
) -> None:
    """Train, evaluate and report one run; leaves everything in the run folder."""
    from fedmeta.api import drive, noise_notice
    from fedmeta.config import load_config
    from fedmeta.federated.runtime import Runtime
    from fedmeta.report import write_report
    from fedmeta.rundir import RunDir
    from fedmeta.train import build

    if resume is not None:
        if config is not None or set_ or data_dir:
            raise BadInput("--resume", str(resume), "no CONFIG or --set with --resume (the folder's config is used)")
        folder, cfg = RunDir.open(resume, lock=True)
        if (folder.path / "summary.json").is_file():
            if not (folder.path / "report.html").is_file():  # killed while the report was written
                write_report(folder.path)
            print(f"fedmeta: {folder.path} already finished (see summary.json); nothing to resume", file=sys.stderr)
            return
        folder.read_checkpoint()  # a damaged or foreign checkpoint is refused before anything runs
        runtime = Runtime(cfg) if cfg.federated is not None else build(cfg)
    else:
        overrides = list(set_ or []) + ([f"data.data_dir={data_dir!r}"] if data_dir else [])
        cfg = load_config(config, overrides)
        # data, model and privacy budget are checked before the folder exists: a bad start
        # never leaves a folder that blocks the same command
        runtime = Runtime(cfg) if cfg.federated is not None else build(cfg)
        cfg = runtime.cfg if cfg.federated is not None else cfg  # a table's schema, as read
        folder = RunDir.create(out, cfg)
    print(f"run folder: {folder.path}", file=sys.stderr)
    if notice := noise_notice(cfg):
        print(notice, file=sys.stderr)
    try:
        summary = drive(cfg, folder, runtime, resume=resume is not None, show_progress=progress)
    except (BadInput, KeyboardInterrupt):
        raise
    except Exception as err:
        raise FedmetaError(f"{type(err).__name__}: {err} ({_resumable(folder)})") from err
    write_report(folder.path)
    folder.close()
    print(f"done: {_figures(summary)}; report: {folder.path / 'report.html'}")


def _figures(summary: dict[str, Any]) -> str:
    """The final figures, and for a DP run the ε spent at its δ."""
    figures = ", ".join(f"{k}={v:.4g}" for k, v in summary["final"].items() if isinstance(v, float))
    if "epsilon" not in summary:
        return figures
    eps = summary["epsilon"]
    spent = "ε=inf (no noise)" if eps is None else f"ε={eps:.4g}"
    return f"{figures}; {spent} at δ={summary['delta']:g} ({summary['accountant'].upper()})"


def _resumable(folder: RunDir) -> str:
    """What the user can do with the folder of a failed run, said only when true."""
    try:
        folder.read_checkpoint()
    except BadInput as err:
        return f"the run folder cannot be resumed: {err}"
    return f"the run folder is resumable: fedmeta run --resume {folder.path}"
