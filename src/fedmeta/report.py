"""Plots and an HTML report of a run folder, rebuilt from its files alone.

Reads `metrics.jsonl` and `summary.json`; writes one PNG per figure and `report.html`
that embeds them, so the report is the same whether made at the end of a run or later
by `fedmeta report DIR`.
"""

from __future__ import annotations

import errno
import html
import json
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedmeta.errors import BadInput, FedmetaError


def _series(rows: list[dict], split: str, key: str) -> tuple[list, list]:
    pts = [(r["round"], r[key]) for r in rows if r.get("split") == split and key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, grid: bool = True) -> bool:
    """Label, save and close a figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_before_after(rows: list[dict], metric: str, path: Path) -> bool:
    splits = sorted({r["split"] for r in rows if f"{metric}_after" in r})
    if not splits:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for split in splits:
        for when, style in (("before", "--"), ("after", "-")):
            x, y = _series(rows, split, f"{metric}_{when}")
            ax.plot(x, y, style, marker=".", label=f"{split}, {when} adaptation")
    if metric == "loss":
        ax.set_yscale("log")
    return _finish(fig, ax, path, "round", "query " + ("accuracy" if metric == "acc" else "loss"))


def _plot_bytes(rows: list[dict], path: Path) -> bool:
    pts = sorted({r["round"]: r for r in rows if r.get("bytes_up")}.items())
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for key, label in (("bytes_up", "up (clients → server)"), ("bytes_down", "down (server → clients)")):
        ax.plot([p[0] for p in pts], [p[1].get(key, 0) / 1e6 for p in pts], marker=".", label=label)
    return _finish(fig, ax, path, "round", "MB per round")


def _plot_personalization(per_client: dict, path: Path) -> bool:
    metric = "acc" if "acc_after" in per_client else "loss"
    if f"{metric}_after" not in per_client:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    values = [per_client[f"{metric}_before"], per_client[f"{metric}_after"]]
    ax.hist(values, bins=20, label=["before adaptation", "after adaptation"], alpha=0.8)
    xlabel = f"query {'accuracy' if metric == 'acc' else 'loss'} per held-out client"
    return _finish(fig, ax, path, xlabel, "clients", grid=False)


def _round_rows(rows: list[dict]) -> list[dict]:
    """One metrics row per round (the last written for it)."""
    return [r for _, r in sorted({r["round"]: r for r in rows if "round" in r}.items())]


def _plot_privacy(rows: list[dict], path: Path) -> bool:
    """ε spent after each round and, if it moves, the clip norm C used in the round."""
    pts = [r for r in _round_rows(rows) if r.get("epsilon") is not None]
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot([r["round"] for r in pts], [r["epsilon"] for r in pts], marker=".", label=f"ε at δ = {pts[-1]['delta']:g}")
    clips = [(r["round"], r["clip_norm"]) for r in pts if "clip_norm" in r]
    if len({c for _, c in clips}) > 1:
        twin = ax.twinx()
        twin.plot(*zip(*clips, strict=True), color="tab:orange", label="clip norm C (adaptive)")
        twin.set_ylabel("clip norm C")
        twin.legend(fontsize=8, loc="lower right")
    return _finish(fig, ax, path, "round", "ε spent")


def _privacy_section(summary: dict, figure: str | None) -> str:
    """Accountant, final (ε, δ), secure aggregation and the membership-inference audit."""
    cfg = summary.get("privacy", {})
    audit = summary.get("membership_audit")
    if not cfg and audit is None:
        return ""
    parts = ["<h2>Privacy</h2>"]
    if summary.get("epsilon") is not None:
        level = ("example-level DP-SGD in each client" if cfg.get("dp") == "example" else
                 f"client-level DP ({cfg.get('dp')} noise, {cfg.get('clipping')} clipping)")
        parts.append(f"<p>Differential privacy: {html.escape(level)}, accountant <b>{html.escape(str(summary.get('accountant')))}</b> (dp-accounting): "
                     f"ε = <b>{summary['epsilon']:.4g}</b> at δ = {summary['delta']:g} after {summary.get('rounds')} rounds. "
                     f"Secure aggregation: {html.escape(str(cfg.get('secure_aggregation', 'off')))}.</p>")
    elif cfg:
        parts.append(f"<p>Differential privacy: {html.escape(str(cfg.get('dp', 'off')))} (no finite ε). "
                     f"Secure aggregation: {html.escape(str(cfg.get('secure_aggregation', 'off')))}.</p>")
    if figure:
        parts.append(f"<img src='{figure}' alt='privacy spent per round'>")
    if audit is not None:
        tprs = "".join(f"<td>{v:.3g}</td>" for v in audit["tpr_at_fpr"].values())
        heads = "".join(f"<th>TPR at FPR {html.escape(k)}</th>" for k in audit["tpr_at_fpr"])
        parts.append(
            "<h3>Membership-inference audit</h3><p>" + html.escape(audit["attack"]) + " against the final global "
            "model: training clients' examples (members) vs held-out clients' examples. AUC 0.5 is chance.</p>"
            f"<table><tr><th>AUC</th>{heads}<th>members</th><th>non-members</th></tr>"
            f"<tr><td>{audit['auc']:.3f}</td>{tprs}<td>{audit['n_members']}</td><td>{audit['n_nonmembers']}</td></tr></table>")
    return "".join(parts)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.3g}"


def _ledger_table(run_dir: Path) -> str:
    """The model history as the ledger records it: entry, round, model, parent, contributors."""
    if not (run_dir / "ledger.db").exists():
        return ""
    from fedmeta.ledger import RunLedger

    with RunLedger.open(run_dir) as ledger:
        entries = [(i, json.loads(body)) for i, body, _ in ledger.ledger.entries()]
    rows = "".join(
        f"<tr><td>{i}</td><td>{e['round']}</td>"
        f"<td><a href='models/{e['model_sha256']}.pt'><code>{e['model_sha256'][:16]}</code></a></td>"
        f"<td><code>{e['parent_sha256'][:16]}</code></td><td>{len(e['clients'])}</td>"
        f"<td>{len(e['rejected'])}</td><td>{_fmt(e['epsilon'])}</td></tr>"
        for i, e in entries
        if e.get("type") == "round"
    )
    return (
        "<h2>Model history (ledger.db)</h2><p>Each model version as recorded in the signed ledger; "
        "check it with <code>fedmeta ledger verify " + html.escape(str(run_dir)) + "</code>.</p>"
        "<table><tr><th>entry</th><th>round</th><th>model SHA-256</th><th>parent</th>"
        "<th>contributors</th><th>rejected</th><th>ε</th></tr>" + rows + "</table>"
    )


def _read_json(path: Path) -> dict:
    """A JSON object file of the run folder; anything else is bad input naming the file."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise BadInput(path.name, str(path), f"a JSON object in UTF-8 (byte {err.start} is not UTF-8)") from None
    except json.JSONDecodeError as err:
        raise BadInput(path.name, str(path), f"a JSON object, as `fedmeta run` writes it ({err})") from None
    if not isinstance(doc, dict):
        raise BadInput(path.name, str(path), "a JSON object, as `fedmeta run` writes it")
    return doc


def read_metrics(path: Path) -> list[dict]:
    """The rows of a `metrics.jsonl`; a line that is not a JSON object is bad input naming it."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise BadInput(path.name, str(path), f"UTF-8 JSON lines (byte {err.start} is not UTF-8)") from None
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            row, reason = None, f"{err.msg} at column {err.colno}"
        else:
            reason = "a JSON object"
        if not isinstance(row, dict):
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise BadInput(f"{path.name} line {number}", shown,
                           f"one JSON object per line ({reason}), as `fedmeta run` writes it")
        rows.append(row)
    return rows


def write_report(run_dir: str | Path) -> Path:
    """Write the PNGs and `report.html` of a run folder; returns the HTML path. Malformed
    input files are bad input; a folder that cannot take the files (full disk, read-only)
    is a one-line failure naming what to run again."""
    run_dir = Path(run_dir)
    rows = read_metrics(run_dir / "metrics.jsonl")
    summary_path = run_dir / "summary.json"
    summary = _read_json(summary_path) if summary_path.exists() else {}
    per_client_path = run_dir / "personalization.json"
    per_client = _read_json(per_client_path) if per_client_path.exists() else None
    try:
        return _write(run_dir, rows, summary, per_client)
    except OSError as err:
        plt.close("all")
        reason = err.strerror or str(err)
        code = errno.errorcode.get(err.errno, "")
        raise FedmetaError(
            f"cannot write the report in {run_dir}: {reason}{f' ({code})' if code else ''}; "
            f"once the folder can take it, rebuild it with `fedmeta report {run_dir}`"
        ) from err


def _write(run_dir: Path, rows: list[dict], summary: dict, per_client: dict | None) -> Path:
    figures: dict[str, str] = {}
    for metric, title in (("loss", "Query loss before and after adaptation"), ("acc", "Query accuracy before and after adaptation")):
        name = f"{metric}.png"
        if _plot_before_after(rows, metric, run_dir / name):
            figures[name] = title
    if per_client is not None and _plot_personalization(per_client, run_dir / "personalization.png"):
        figures["personalization.png"] = "Personalization: held-out clients before and after adaptation"
    if _plot_bytes(rows, run_dir / "bytes.png"):
        figures["bytes.png"] = "Communication per round (bytes counted from the serialized updates)"
    privacy_figure = "privacy.png" if _plot_privacy(rows, run_dir / "privacy.png") else None
    last = defaultdict(dict)
    for r in rows:
        if "loss_after" in r:
            last[r.get("split", "")] = r
    table = "".join(
        f"<tr><td>{html.escape(split)}</td>"
        + "".join(f"<td>{r.get(k, float('nan')):.4g}</td>" for k in ("loss_before", "loss_after", "acc_before", "acc_after"))
        + "</tr>"
        for split, r in last.items()
    )
    config = (run_dir / "config.toml").read_text() if (run_dir / "config.toml").exists() else ""
    body = [
        f"<h1>fedmeta run: {html.escape(run_dir.name)}</h1>",
        "<h2>Final evaluation</h2>",
        "<table><tr><th>split</th><th>loss before</th><th>loss after</th><th>acc before</th><th>acc after</th></tr>",
        table,
        "</table>",
        *(f"<h2>{html.escape(t)}</h2><img src='{n}' alt='{html.escape(t)}'>" for n, t in figures.items()),
        _privacy_section(summary, privacy_figure),
        _ledger_table(run_dir),
        "<h2>Summary</h2><pre>" + html.escape(json.dumps(summary, indent=2)) + "</pre>",
        "<h2>Configuration</h2><pre>" + html.escape(config) + "</pre>",
    ]
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>fedmeta report</title>"
        "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}</style>"
        "</head><body>" + "\n".join(body) + "</body></html>"
    )
    out = run_dir / "report.html"
    out.write_text(page)
    return out
