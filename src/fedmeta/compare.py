"""Compare runs side by side: `fedmeta compare RUN_OR_SWEEP... [--html FILE]`.

Each argument is a run folder, a `--seeds` folder (its seeds make one entry) or a `--sweep`
folder (one entry per cell). The table's columns are the config keys whose values differ
between the entries (dotted, from each run's `config.toml`), then the final figures (mean ±
sd over an entry's seeds), ε, bytes per round and wall seconds. The HTML report overlays
the entries' evaluation curves per round, their figures before and after adaptation and
their ε per round, every figure embedded in the one file.
"""

from __future__ import annotations

import base64
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.ticker import MaxNLocator

from fedmeta.errors import BadInput
from fedmeta.report import plt, read_config, read_json, read_metrics, save_figure
from fedmeta.sweep import AGGREGATE_FILE, SWEEP_FILE, stats

COLUMNS = {"acc_after": "acc_after", "loss_after": "loss_after", "acc_before": "acc_before",
           "loss_before": "loss_before", "epsilon": "ε", "bytes_per_round": "bytes/round", "seconds": "seconds"}
MISSING = "—"


@dataclass
class Entry:
    """One row of the comparison: a run, or the seeds of one cell."""

    label: str
    runs: list[Path]

    def summaries(self) -> list[dict[str, Any]]:
        return [read_json(run / "summary.json") for run in self.runs if (run / "summary.json").is_file()]


# -- what is compared -------------------------------------------------------------------------
def entries(paths: list[Path]) -> list[Entry]:
    """The entries of every argument: a sweep's cells, a --seeds folder's seeds, or a run."""
    found: list[Entry] = []
    for path in paths:
        name = path.resolve().name
        if (path / SWEEP_FILE).is_file():
            for cell in read_json(path / SWEEP_FILE)["cells"]:
                label = f"{name}/{cell['name']}" if cell["name"] else name
                found.append(Entry(label, _started(path / cell["folder"], [f"seed-{s}" for s in cell["seeds"]])))
        elif (path / AGGREGATE_FILE).is_file():
            found.append(Entry(name, _started(path, read_json(path / AGGREGATE_FILE)["runs"])))
        elif (path / "config.toml").is_file():
            found.append(Entry(name, [path]))
        else:
            raise BadInput("RUN_OR_SWEEP", str(path), "a run folder (config.toml), a --seeds folder "
                                                      "(aggregate.json) or a --sweep folder (sweep.json)")
    found = [e for e in found if e.runs]
    if not found:
        raise BadInput("RUN_OR_SWEEP", " ".join(map(str, paths)), "folders holding at least one started run")
    return found


def _started(folder: Path, runs: list[str]) -> list[Path]:
    """The runs of a cell that have begun (hold config.toml)."""
    return [folder / r for r in runs if (folder / r / "config.toml").is_file()]


def _shown(value: Any) -> str:
    """A config value as the table shows it."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def entry_config(entry: Entry) -> dict[str, str]:
    """The entry's flattened config, shown; a key whose value differs between its seeds
    (run.seed) lists the values."""
    configs = [read_config(run) for run in entry.runs]
    keys = dict.fromkeys(k for c in configs for k in c)
    return {k: ", ".join(dict.fromkeys(_shown(c[k]) if k in c else MISSING for c in configs)) for k in keys}


def differing_keys(configs: list[dict[str, str]]) -> list[str]:
    """The keys whose values are not the same in every config, in config order."""
    keys = dict.fromkeys(k for c in configs for k in c)
    return [k for k in keys if len({c.get(k, MISSING) for c in configs}) > 1]


# -- figures ----------------------------------------------------------------------------------
def run_figures(summary: dict[str, Any]) -> dict[str, float]:
    """One run's compared figures: final ones, ε, bytes per round (up + down) and seconds."""
    figures = {k: v for k, v in summary.get("final", {}).items() if k in COLUMNS}
    if summary.get("epsilon") is not None:
        figures["epsilon"] = summary["epsilon"]
    if summary.get("rounds") and "bytes_up_total" in summary:
        figures["bytes_per_round"] = (summary["bytes_up_total"] + summary.get("bytes_down_total", 0)) / summary["rounds"]
    if "seconds" in summary:
        figures["seconds"] = summary["seconds"]
    return figures


def entry_figures(entry: Entry) -> dict[str, dict[str, Any]]:
    """Each figure's mean, sd and n over the entry's finished runs."""
    per_run = [run_figures(s) for s in entry.summaries()]
    return {k: stats([f[k] for f in per_run if k in f]) for k in COLUMNS if any(k in f for f in per_run)}


def _number(x: float, digits: int) -> str:
    """`x` to `digits` significant digits; from 10,000 on, whole with thousands separators."""
    return f"{x:,.0f}" if abs(x) >= 1e4 else f"{x:.{digits}g}"


def _mean_sd(figure: dict[str, Any] | None) -> str:
    if figure is None:
        return MISSING
    mean = _number(figure["mean"], 4)
    return mean if figure["sd"] is None else f"{mean} ± {_number(figure['sd'], 2)}"


def compare_table(found: list[Entry]) -> tuple[list[str], list[list[str]]]:
    """The table's headers and rows: entry, differing config keys, figures present in any entry."""
    configs = [entry_config(e) for e in found]
    figures = [entry_figures(e) for e in found]
    keys = differing_keys(configs)
    columns = [k for k in COLUMNS if any(k in f for f in figures)]
    headers = ["run", *keys, *(COLUMNS[k] for k in columns)]
    rows = [[e.label, *(c.get(k, MISSING) for k in keys), *(_mean_sd(f.get(k)) for k in columns)]
            for e, c, f in zip(found, configs, figures, strict=True)]
    return headers, rows


# -- output -----------------------------------------------------------------------------------
def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    """The table as aligned plain text."""
    widths = [max(len(r[i]) for r in [headers, *rows]) for i in range(len(headers))]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """The table on stdout: drawn by rich on a terminal, plain text anywhere else."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not console.is_terminal:
        print(plain_table(headers, rows))
        return
    table = Table(*headers)
    for row in rows:
        table.add_row(*row)
    console.print(table)


def _png(fig, ax, xlabel: str, ylabel: str) -> str:
    """A figure as a base64 PNG (closed once saved)."""
    buffer = io.BytesIO()
    save_figure(fig, ax, buffer, xlabel, ylabel)
    return base64.b64encode(buffer.getvalue()).decode()


def _per_round(run: Path, key: str) -> dict[int, float]:
    """`key` per round from the run's test split (its train split when it has no test split;
    ε from every row)."""
    rows = read_metrics(run / "metrics.jsonl") if (run / "metrics.jsonl").is_file() else []
    split = "test" if any(r.get("split") == "test" for r in rows) else "train"
    return {r["round"]: r[key] for r in rows
            if r.get(key) is not None and "round" in r and (key == "epsilon" or r.get("split") == split)}


def _mean_curve(entry: Entry, key: str) -> tuple[list[int], list[float]]:
    """`key` per round, averaged over the entry's runs at the rounds they all have."""
    curves = [_per_round(run, key) for run in entry.runs]
    rounds = sorted(set.intersection(*(set(c) for c in curves)))
    return rounds, [sum(c[r] for c in curves) / len(curves) for r in rounds]


def _curves(found: list[Entry], key: str, ylabel: str) -> str | None:
    """The entries' `key` per round, overlaid; None when no entry has it."""
    curves = [(e.label, *_mean_curve(e, key)) for e in found]
    if not any(rounds for _, rounds, _ in curves):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for label, rounds, values in curves:
        if rounds:
            ax.plot(rounds, values, marker=".", label=label)
    return _png(fig, ax, "round", ylabel)


def _before_after(found: list[Entry], figures: list[dict[str, dict[str, Any]]]) -> str | None:
    """Bars of the final figure before and after adaptation per entry (accuracy when
    classified, else loss), with ± sd over seeds."""
    metric = "acc" if any("acc_after" in f for f in figures) else "loss"
    if not any(f"{metric}_after" in f for f in figures):
        return None
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = range(len(found))
    for offset, when in ((-0.2, "before"), (0.2, "after")):
        stat = [f.get(f"{metric}_{when}", {"mean": float("nan"), "sd": None}) for f in figures]
        ax.bar([x + offset for x in xs], [s["mean"] for s in stat], width=0.4, label=f"{when} adaptation",
               yerr=[s["sd"] or 0.0 for s in stat], capsize=3)
    ax.set_xticks(list(xs), [e.label for e in found], rotation=20, ha="right", fontsize=8)
    return _png(fig, ax, "", "final query " + ("accuracy" if metric == "acc" else "loss"))


def write_html(found: list[Entry], headers: list[str], rows: list[list[str]], path: Path) -> Path:
    """One self-contained HTML file: the table, the curves per round, before/after bars, ε per round."""
    figures = [entry_figures(e) for e in found]
    plots = {
        "Query loss after adaptation per round (test split, else train)":
            _curves(found, "loss_after", "query loss after adaptation"),
        "Query accuracy after adaptation per round (test split, else train)":
            _curves(found, "acc_after", "query accuracy after adaptation"),
        "Before and after adaptation, final": _before_after(found, figures),
        "ε spent per round": _curves(found, "epsilon", "ε"),
    }
    table = ("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in headers) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
             + "</table>")
    folders = "".join(f"<li>{html.escape(e.label)}: {len(e.runs)} run(s) in "
                      f"<code>{html.escape(str(e.runs[0].parent if len(e.runs) > 1 else e.runs[0]))}</code></li>"
                      for e in found)
    body = ["<h1>fedmeta comparison</h1>", f"<ul>{folders}</ul>", table,
            *(f"<h2>{html.escape(t)}</h2><img src='data:image/png;base64,{png}' alt='{html.escape(t)}'>"
              for t, png in plots.items() if png is not None)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>fedmeta comparison</title>"
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
            "</head><body>" + "\n".join(body) + "</body></html>")
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as err:
        raise BadInput("--html", str(path), f"a file that can be written ({err.strerror})") from None
    return path
