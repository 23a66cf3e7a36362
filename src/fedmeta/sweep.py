"""Seeds and sweeps: `fedmeta run CONFIG --seeds N --sweep KEY=V1,V2,...`.

A grid is the Cartesian product of the swept values (its cells), each cell run for N seeds
from its own `run.seed` into `OUT/<cell>/seed-<s>/` (`OUT/seed-<s>/` without `--sweep`).
Each cell's `aggregate.json` holds the mean, sample sd, n and 95% t-interval of every
numeric final figure of its runs; `OUT/sweep.json` holds the plan (the resolved config,
the sweep and the seeds) and every cell with its overrides and aggregate.

Every cell's config is validated before anything is written. The same command with the
same OUT continues a grid: a finished run (its `summary.json` exists) is read, not rerun;
a begun one is resumed; a different plan is refused.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmeta.config import Config, load_config
from fedmeta.errors import BadInput, ConfigError
from fedmeta.report import flatten, read_json
from fedmeta.rundir import RunDir, atomic_write

SWEEP_FILE = "sweep.json"
AGGREGATE_FILE = "aggregate.json"
SUMMARY_FIGURES = ("epsilon", "bytes_up_total", "bytes_down_total", "seconds")  # besides summary["final"]
_UNSAFE = re.compile(r"[^A-Za-z0-9._,=+@-]")
_MAX_NAME = 120
_SWEEP_FORM = "KEY=V1,V2,... with a dotted config key, e.g. meta.algorithm=maml,reptile"

# (path, overrides) -> summary: start the run at `path` with these --set items, or resume
# the run begun there when `overrides` is None
Execute = Callable[[Path, list[str] | None], dict[str, Any]]


@dataclass
class Cell:
    """One point of the grid: its swept values and the seeds it runs."""

    name: str  # e.g. "meta.algorithm=maml,federated.rounds=3"; "" without --sweep
    folder: str  # under OUT: the name made safe for the filesystem, "." without --sweep
    swept: dict[str, str]  # key -> the value as given
    overrides: list[str]  # the --set items, then the swept ones
    seeds: list[int]

    def run_overrides(self, seed: int) -> list[str]:
        return [*self.overrides, f"run.seed={seed}"]

    def record(self, aggregate: dict[str, Any] | None) -> dict[str, Any]:
        """The cell as `sweep.json` lists it."""
        return {"name": self.name, "folder": self.folder, "overrides": self.swept, "seeds": self.seeds,
                "aggregate": aggregate}


# -- the plan ---------------------------------------------------------------------------------
def parse_sweep(items: Iterable[str]) -> dict[str, list[str]]:
    """`--sweep KEY=V1,V2,...` items as key -> values (each a --set value, as given)."""
    sweep: dict[str, list[str]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        values = split_values(raw) if sep else []
        if not key or not values or not all(values):
            raise BadInput("--sweep", item, _SWEEP_FORM)
        if key in sweep:
            raise BadInput("--sweep", item, f"each key swept once ({key} is swept twice)")
        if len(set(values)) < len(values):
            raise BadInput("--sweep", item, "distinct values")
        sweep[key] = values
    return sweep


def split_values(raw: str) -> list[str]:
    """`raw` split at the commas outside brackets, braces and quotes: `1,[2,3],'a,b'` is three values."""
    values, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            values.append(raw[start:i].strip())
            start = i + 1
    return [*values, raw[start:].strip()]


def config_record(cfg: Config) -> dict[str, Any]:
    """A resolved config as its `config.toml` reads, flattened."""
    return flatten(tomllib.loads(cfg.to_toml()))


def _checked(config: Path | None, overrides: list[str], option: str) -> Config:
    """`load_config`, a refusal naming the option whose values caused it."""
    try:
        return load_config(config, overrides)
    except ConfigError as err:
        raise ConfigError(f"{option} {err.field}", err.value, err.accepted) from None


def _folder_names(names: list[str]) -> list[str]:
    """A distinct folder name for each cell name: unsafe characters as `_`; a name cut to
    length, or the same as an earlier one, gets `~<cell number>`."""
    folders: list[str] = []
    for i, name in enumerate(names):
        safe = _UNSAFE.sub("_", name)
        folder = safe[:_MAX_NAME].lstrip(".")
        if folder != safe or folder in folders:
            folder = f"{folder}~{i + 1}"
        folders.append(folder)
    return folders


def plan_grid(config: Path | None, overrides: list[str], sweep_items: Iterable[str],
              seeds: int) -> tuple[dict[str, Any], list[Cell]]:
    """The plan (what `sweep.json` records and a rerun must match) and the cells, every
    cell's config checked: a refusal names --sweep or --seeds and the key."""
    if seeds < 1:
        raise BadInput("--seeds", seeds, "an integer >= 1 (the number of seeds, from run.seed)")
    base = load_config(config, overrides)
    sweep = parse_sweep(sweep_items)
    combos = [dict(zip(sweep, values, strict=True)) for values in itertools.product(*sweep.values())]
    names = [",".join(f"{k}={v}" for k, v in swept.items()) for swept in combos]
    folders = _folder_names(names) if sweep else ["."]
    cells = []
    for name, folder, swept in zip(names, folders, combos, strict=True):
        items = [*overrides, *(f"{k}={v}" for k, v in swept.items())]
        first = _checked(config, items, "--sweep").run.seed
        cell = Cell(name, folder, swept, items, list(range(first, first + seeds)))
        _checked(config, cell.run_overrides(cell.seeds[-1]), "--seeds")
        cells.append(cell)
    return {"config": config_record(base), "sweep": sweep, "seeds": seeds}, cells


def check_out(out: Path, plan: dict[str, Any]) -> None:
    """OUT is new, empty, or holds this same plan: a run folder or another grid is refused."""
    if out.exists() and not out.is_dir():
        raise BadInput("--out", str(out), "a folder to hold the grid (this is a file)")
    if (out / "config.toml").exists():
        raise BadInput("--out", str(out), "a new folder, or this grid's own (this one holds a single run)")
    if not (out / SWEEP_FILE).is_file():
        return
    recorded, expected = read_json(out / SWEEP_FILE).get("plan", {}), json.loads(json.dumps(plan))
    if recorded != expected:
        raise BadInput("--out", str(out), "a new folder, or this grid's own "
                                          f"(it holds another grid: {_difference(recorded, expected)})")


def _difference(recorded: dict[str, Any], plan: dict[str, Any]) -> str:
    """The first part of `plan` that differs from `recorded`, in words."""
    if recorded.get("seeds") != plan["seeds"]:
        return f"--seeds {recorded.get('seeds')}, not {plan['seeds']}"
    if recorded.get("sweep") != plan["sweep"]:
        return f"--sweep {recorded.get('sweep')}, not {plan['sweep']}"
    old, new = recorded.get("config", {}), plan["config"]
    key = next((k for k in (*new, *old) if old.get(k) != new.get(k)), None)
    return "another config" if key is None else f"{key} = {old.get(key)!r}, not {new.get(key)!r}"


# -- running ----------------------------------------------------------------------------------
def run_state(path: Path) -> str:
    """"finished" (summary.json), "begun" (config.toml: resume it) or "new"."""
    if (path / "summary.json").is_file():
        return "finished"
    return "begun" if (path / "config.toml").is_file() else "new"


def run_grid(out: Path, plan: dict[str, Any], cells: list[Cell], execute: Execute,
             log: Callable[[str], None]) -> None:
    """Run every cell's seeds into OUT (finished runs read, begun ones resumed), writing
    each cell's aggregate.json and sweep.json as cells finish; `log` gets one line per run."""
    out.mkdir(parents=True, exist_ok=True)
    writer = RunDir(out)
    writer.lock("--out")
    try:
        if (out / SWEEP_FILE).is_file():
            records = read_json(out / SWEEP_FILE)["cells"]
        else:
            records = [cell.record(None) for cell in cells]
        write_json(out / SWEEP_FILE, {"plan": plan, "cells": records})
        for i, cell in enumerate(cells):
            summaries = []
            for seed in cell.seeds:
                path = out / cell.folder / f"seed-{seed}"
                state = run_state(path)
                where = " ".join(filter(None, (f"cell {i + 1}/{len(cells)}", cell.name, f"seed {seed}")))
                log(f"{where}: " + {"finished": "finished before", "begun": "resuming", "new": "starting"}[state])
                if state == "finished":
                    summaries.append(read_json(path / "summary.json"))
                else:
                    summaries.append(execute(path, cell.run_overrides(seed) if state == "new" else None))
            records[i] = cell.record(aggregate(summaries))
            write_json(out / cell.folder / AGGREGATE_FILE,
                       {"cell": cell.name, "seeds": cell.seeds, "runs": [f"seed-{s}" for s in cell.seeds],
                        "figures": records[i]["aggregate"]})
            write_json(out / SWEEP_FILE, {"plan": plan, "cells": records})
    finally:
        writer.close()


# -- figures ----------------------------------------------------------------------------------
def _numeric(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def figures_of(summary: dict[str, Any]) -> dict[str, float]:
    """The numeric final figures of a summary.json: its `final` entries, then ε, bytes and seconds."""
    items = {**summary.get("final", {}), **{k: summary.get(k) for k in SUMMARY_FIGURES}}
    return {k: v for k, v in items.items() if _numeric(v)}


def stats(values: list[float]) -> dict[str, Any]:
    """Mean, sample sd (n - 1), n and the 95% t-interval of the mean (sd and interval None for n = 1)."""
    import numpy as np
    from scipy.stats import t

    n, mean = len(values), float(np.mean(values))
    if n < 2:
        return {"mean": mean, "sd": None, "n": n, "ci95": None}
    sd = float(np.std(values, ddof=1))
    half = float(t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "ci95": [mean - half, mean + half]}


def aggregate(summaries: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each figure's `stats` over the summaries that have it."""
    figures = [figures_of(s) for s in summaries]
    keys = dict.fromkeys(k for f in figures for k in f)
    return {k: stats([f[k] for f in figures if k in f]) for k in keys}


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, (json.dumps(doc, indent=2) + "\n").encode())
