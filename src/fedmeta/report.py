"""Plots and an HTML report of a run folder, rebuilt from its files alone.

Reads `config.toml`, `metrics.jsonl` and `summary.json`; writes one PNG per figure and
`report.html` that embeds them, so the report is the same whether made at the end of a run
or later by `fedmeta report DIR`. The page opens with what ran (algorithm, clients, rounds,
privacy, secure aggregation, robust rule, attack).
"""

from __future__ import annotations

import errno
import html
import json
import math
import tomllib
from collections import defaultdict
from functools import cache
from pathlib import Path
from typing import IO, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedmeta.config import Config, FederatedConfig, move_deprecated
from fedmeta.errors import BadInput, FedmetaError


def _series(rows: list[dict], split: str, key: str) -> tuple[list, list]:
    pts = [(r["round"], r[key]) for r in rows if r.get("split") == split and key in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def save_figure(fig, ax, path: Path | IO[bytes], xlabel: str, ylabel: str, grid: bool = True) -> bool:
    """Label, save (as PNG) and close a figure."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if grid:
        ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
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
    return save_figure(fig, ax, path, "round", "query " + ("accuracy" if metric == "acc" else "loss"))


def _plot_bytes(rows: list[dict], path: Path) -> bool:
    pts = sorted({r["round"]: r for r in rows if r.get("bytes_up")}.items())
    if not pts:
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for key, label in (("bytes_up", "up (clients → server)"), ("bytes_down", "down (server → clients)")):
        ax.plot([p[0] for p in pts], [p[1].get(key, 0) / 1e6 for p in pts], marker=".", label=label)
    return save_figure(fig, ax, path, "round", "MB per round")


def _plot_personalization(per_client: dict, path: Path) -> bool:
    metric = "acc" if "acc_after" in per_client else "loss"
    if f"{metric}_after" not in per_client:
        return False
    values = [[v for v in per_client[f"{metric}_{when}"] if math.isfinite(v)] for when in ("before", "after")]
    if not all(values):  # a diverged run: nothing finite to draw on one side
        return False
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.hist(values, bins=20, label=["before adaptation", "after adaptation"], alpha=0.8)
    xlabel = f"query {'accuracy' if metric == 'acc' else 'loss'} per held-out client"
    return save_figure(fig, ax, path, xlabel, "clients", grid=False)


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
    return save_figure(fig, ax, path, "round", "ε spent")


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


def flatten(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested table as dotted key -> value (lists stay values)."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def read_config(run_dir: Path) -> dict[str, Any]:
    """A run folder's `config.toml` as dotted key -> value (an older flat [federated]
    layout moved to its sections); {} without one."""
    path = run_dir / "config.toml"
    if not path.is_file():
        return {}
    try:
        config = tomllib.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise BadInput(path.name, str(path), f"a TOML file, as `fedmeta run` writes it ({err})") from None
    if isinstance(config.get("federated"), dict):
        config["federated"] = move_deprecated(config["federated"])[0]
    return flatten(config)


@cache
def _defaults() -> dict[str, Any]:
    """Every key of a federated config at its default, dotted."""
    return flatten(tomllib.loads(Config(federated=FederatedConfig()).to_toml()))


class _Settings(dict):
    """A flattened config that answers a key it lacks (a folder older than the key) with its default."""

    def __missing__(self, key: str) -> Any:
        return _defaults().get(key)


def _option_list(config: _Settings, name_key: str) -> str:
    """A robust rule's or attack's name and, unless it is the default, the options set in
    its section: `krum (byzantine_clients = 2)`."""
    section, name = name_key.rsplit(".", 1)[0], config[name_key]
    options = ", ".join(f"{k.removeprefix(section + '.')} = {v}" for k, v in config.items()
                        if k.startswith(section + ".") and k != name_key)
    return f"{name} ({options})" if options and name != _defaults()[name_key] else str(name)


def _robust_or_attack(config: _Settings) -> bool:
    """A robust rule other than the mean, or simulated attackers."""
    return any(config[k] != _defaults()[k] for k in ("federated.robust.rule", "federated.attack.name"))


def _privacy_spent(config: _Settings, summary: dict, rows: list[dict]) -> str:
    """The DP level and ε at δ: the summary's, else the last accounted round's."""
    dp = config["privacy.dp"]
    if dp == "off":
        return "off"
    accounted = [r for r in rows if "epsilon" in r]
    source = summary if "epsilon" in summary else (accounted[-1] if accounted else {})
    level = "example-level DP-SGD" if dp == "example" else f"client-level DP ({dp} noise)"
    if "epsilon" not in source:
        return f"{level}; ε not accounted yet"
    eps = "∞ (no noise)" if source["epsilon"] is None else f"{source['epsilon']:.4g}"
    return f"{level}: ε = {eps} at δ = {source.get('delta', config['privacy.delta']):g}"


def _what_ran(config: _Settings, summary: dict, rows: list[dict]) -> dict[str, str]:
    """What ran, item by item: algorithm and procedure, clients, rounds, privacy, secure
    aggregation, robust rule and attack (a central run: algorithm and iterations)."""
    algorithm = config["meta.algorithm"]
    if not any(k.startswith("federated.") for k in config):
        return {"algorithm": f"{algorithm} (centralized meta-training)",
                "iterations": str(summary.get("iterations", config["train.iterations"]))}
    procedure, planned, per_round = (config[k] for k in ("federated.clients.procedure", "federated.rounds",
                                                           "federated.clients_per_round"))
    rounds = str(summary.get("rounds", planned))
    if summary.get("rounds", planned) != planned:
        rounds += f" of {planned} ({summary.get('stopped') or 'stopped early'})"
    return {
        "algorithm": summary.get("algorithm", algorithm if procedure == "fedmeta" else procedure),
        "procedure": f"{procedure}, server {config['federated.server.strategy']}",
        "clients": f"{config['federated.n_clients']} training, {config['federated.held_out_clients']} held out; "
                   + (f"a fraction {per_round:g}" if 0 < per_round < 1 else f"{per_round:g}") + " per round",
        "rounds": rounds,
        "privacy": _privacy_spent(config, summary, rows),
        "secure aggregation": str(config["privacy.secure_aggregation"]),
        "robust rule": _option_list(config, "federated.robust.rule"),
        "attack": _option_list(config, "federated.attack.name"),
    }


def _header(config: _Settings, summary: dict, rows: list[dict]) -> str:
    """The report's first table: what ran."""
    items = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>"
                    for k, v in _what_ran(config, summary, rows).items())
    return f"<table class='what'>{items}</table>"


ROBUSTNESS_COLUMNS = {"sampled": "sampled", "clients": "admitted", "malicious": "attackers sampled",
                      "rejected": "rejected updates"}


def _robustness_section(config: _Settings, rows: list[dict]) -> str:
    """The robust rule, the attack and, per round, sampled and admitted clients, attackers
    among them and rejected updates: when a rule other than the mean or an attack is set."""
    if not _robust_or_attack(config):
        return ""
    rounds = [r for r in _round_rows(rows) if r.get("round", 0) > 0]
    columns = [k for k in ROBUSTNESS_COLUMNS if any(k in r for r in rounds)]
    cells = "".join(
        "<tr><td>" + str(r["round"]) + "</td>"
        + "".join(f"<td>{len(r[k]) if isinstance(r.get(k), list) else r.get(k, '')}</td>" for k in columns)
        + "</tr>" for r in rounds)
    heads = "".join(f"<th>{ROBUSTNESS_COLUMNS[k]}</th>" for k in columns)
    return (f"<h2>Robustness</h2><p>Aggregation rule: <b>{html.escape(_option_list(config, 'federated.robust.rule'))}"
            f"</b>. Attack: <b>{html.escape(_option_list(config, 'federated.attack.name'))}</b>.</p>"
            + (f"<table><tr><th>round</th>{heads}</tr>{cells}</table>" if rounds else ""))


def read_json(path: Path) -> dict:
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
    summary = read_json(summary_path) if summary_path.exists() else {}
    per_client_path = run_dir / "personalization.json"
    per_client = read_json(per_client_path) if per_client_path.exists() else None
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
    settings = _Settings(read_config(run_dir))
    body = [
        f"<h1>fedmeta run: {html.escape(run_dir.name)}</h1>",
        _header(settings, summary, rows),
        "<h2>Final evaluation</h2>",
        "<table><tr><th>split</th><th>loss before</th><th>loss after</th><th>acc before</th><th>acc after</th></tr>",
        table,
        "</table>",
        *(f"<h2>{html.escape(t)}</h2><img src='{n}' alt='{html.escape(t)}'>" for n, t in figures.items()),
        _privacy_section(summary, privacy_figure),
        _robustness_section(settings, rows),
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
