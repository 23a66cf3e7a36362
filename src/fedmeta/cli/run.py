"""`fedmeta run [CONFIG.toml] [--set a.b=v ...] [--out DIR] [--resume DIR] [--seeds N] [--sweep KEY=V1,V2]`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from fedmeta.cli import app
from fedmeta.errors import BadInput, FedmetaError

if TYPE_CHECKING:
    from fedmeta.config import Config
    from fedmeta.rundir import RunDir


@app.command()
def run(
    config: Annotated[Path | None, typer.Argument(help="Run config (TOML); none = built-in demo.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=v.")] = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>-<time>).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue the run in this folder.")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Datasets folder (else $FEDMETA_DATA).")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar.")] = True,
    seeds: Annotated[int | None, typer.Option(help="Run N seeds from run.seed into OUT/seed-<s>/, "
                                                   "with OUT/aggregate.json.")] = None,
    sweep: Annotated[list[str] | None, typer.Option(help="Sweep a key: KEY=V1,V2,... (repeatable: a grid) "
                                                        "into OUT/<cell>/seed-<s>/, with OUT/sweep.json.")] = None,
) -> None:
    """Train, evaluate and report one run (a grid of runs with --seeds or --sweep); leaves everything in the run folder."""
    from fedmeta.report import write_report
    from fedmeta.rundir import RunDir

    overrides = list(set_ or []) + ([f"data.data_dir={data_dir!r}"] if data_dir else [])
    if seeds is not None or sweep:
        if resume is not None:
            raise BadInput("--seeds" if seeds is not None else "--sweep", seeds if seeds is not None else sweep[0],
                           "not with --resume (the same command with the same --out continues a grid)")
        _grid(config, overrides, out, 1 if seeds is None else seeds, sweep or [], progress)
        return
    if resume is not None:
        if config is not None or set_ or data_dir:
            raise BadInput("--resume", str(resume), "no CONFIG or --set with --resume (the folder's config is used)")
        folder, cfg = RunDir.open(resume, lock=True)
        if (folder.path / "summary.json").is_file():
            if not (folder.path / "report.html").is_file():  # killed while the report was written
                write_report(folder.path)
            print(f"fedmeta: {folder.path} already finished (see summary.json); nothing to resume", file=sys.stderr)
            return
        folder, cfg, runtime = _reopen(folder, cfg)
    else:
        folder, cfg, runtime = _start(config, overrides, out)
    _execute(folder, cfg, runtime, resume=resume is not None, progress=progress, hint=_resumable)


def _runtime(cfg: Config) -> Any:
    """What `drive` runs: the federated `Runtime` or the central setup."""
    from fedmeta.federated.runtime import Runtime
    from fedmeta.train import build

    return Runtime(cfg) if cfg.federated is not None else build(cfg)


def _start(config: Path | None, overrides: list[str], out: Path | None) -> tuple[RunDir, Config, Any]:
    """A new run: config, data, model and privacy budget checked, then its folder created."""
    from fedmeta.config import load_config
    from fedmeta.rundir import RunDir

    cfg = load_config(config, overrides)
    # data, model and privacy budget are checked before the folder exists: a bad start
    # never leaves a folder that blocks the same command
    runtime = _runtime(cfg)
    cfg = runtime.cfg if cfg.federated is not None else cfg  # a table's schema, as read
    return RunDir.create(out, cfg), cfg, runtime


def _reopen(folder: RunDir, cfg: Config) -> tuple[RunDir, Config, Any]:
    """A begun run's folder, opened and locked, with its runtime; a damaged or foreign
    checkpoint is refused before anything runs."""
    try:
        folder.read_checkpoint()
        return folder, cfg, _runtime(cfg)
    except BaseException:
        folder.close()
        raise


def _execute(folder: RunDir, cfg: Config, runtime: Any, *, resume: bool, progress: bool,
             hint: Callable[[RunDir], str]) -> dict[str, Any]:
    """Drive the run into its folder and write its report; a failure of the run says `hint(folder)`."""
    from fedmeta.api import drive, noise_notice
    from fedmeta.report import write_report

    print(f"run folder: {folder.path}", file=sys.stderr)
    if notice := noise_notice(cfg):
        print(notice, file=sys.stderr)
    try:
        try:
            summary = drive(cfg, folder, runtime, resume=resume, show_progress=progress)
        except (BadInput, KeyboardInterrupt):
            raise
        except Exception as err:
            raise FedmetaError(f"{type(err).__name__}: {err} ({hint(folder)})") from err
        write_report(folder.path)
    finally:
        folder.close()
    print(f"done: {_figures(summary)}; report: {folder.path / 'report.html'}")
    return summary


def _grid(config: Path | None, overrides: list[str], out: Path | None, seeds: int, sweep: list[str],
          progress: bool) -> None:
    """Every cell of the sweep for every seed (fedmeta.sweep), each run as a single `fedmeta run`."""
    from fedmeta import sweep as grid
    from fedmeta.rundir import RunDir, default_folder

    plan, cells = grid.plan_grid(config, overrides, sweep, seeds)
    out = default_folder(plan["config"]["run.name"]) if out is None else out
    grid.check_out(out, plan)

    def execute(path: Path, items: list[str] | None) -> dict[str, Any]:
        folder, cfg, runtime = _start(config, items, path) if items is not None else _reopen(*RunDir.open(path, lock=True))
        return _execute(folder, cfg, runtime, resume=items is None, progress=progress,
                        hint=lambda _: f"the same command continues the grid in {out}")

    grid.run_grid(out, plan, cells, execute, lambda line: print(line, file=sys.stderr))
    where = out / (grid.AGGREGATE_FILE if not sweep else grid.SWEEP_FILE)
    print(f"done: {len(cells) * seeds} runs ({len(cells)} cells x {seeds} seeds); aggregates: {where}")


def _figures(summary: dict[str, Any]) -> str:
    """The final figures, and for a DP run the ε spent at its δ."""
    figures = ", ".join(f"{k}={v:.4g}" for k, v in summary["final"].items() if isinstance(v, float))
    if summary.get("non_finite"):
        figures = "; ".join(filter(None, [figures, f"diverged: {', '.join(summary['non_finite'])} not finite"]))
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
