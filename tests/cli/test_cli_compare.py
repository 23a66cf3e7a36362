"""`fedmeta compare`: the differing config keys and the figures of runs and seed groups, the
HTML comparison; the single-run report's header and robustness section."""

import base64
import re
from pathlib import Path

import numpy as np
from test_cli_sweep import no_reports, read, tiny_config  # noqa: F401  (no_reports: an autouse fixture)

from fedmeta.cli import main
from fedmeta.report import read_metrics, write_report


def run(config: str, out: Path, *args: str) -> Path:
    assert main(["run", config, "--out", str(out), *args, "--no-progress"]) == 0
    return out


def table(stdout: str) -> list[list[str]]:
    """The plain-text table's cells, row by row (columns are two or more spaces apart)."""
    lines = [line for line in stdout.splitlines() if line.strip() and not line.startswith("comparison report")]
    return [re.split(r"\s{2,}", line.strip()) for i, line in enumerate(lines) if i != 1]


def test_compare_shows_the_differing_key_and_the_figures(tmp_path, capsys):
    config = tiny_config(tmp_path)
    slow = run(config, tmp_path / "slow")
    fast = run(config, tmp_path / "fast", "--set", "meta.inner_lr=0.02")
    seeds = run(config, tmp_path / "seeds", "--seeds", "2")
    capsys.readouterr()
    page = tmp_path / "compare.html"
    assert main(["compare", str(slow), str(fast), str(seeds), "--html", str(page)]) == 0
    head, *rows = table(capsys.readouterr().out)
    assert head[:3] == ["run", "run.seed", "meta.inner_lr"] and "loss_after" in head, head
    by_run = {row[0]: dict(zip(head, row, strict=True)) for row in rows}
    assert by_run["slow"]["meta.inner_lr"] == "0.01" and by_run["fast"]["meta.inner_lr"] == "0.02"
    assert by_run["seeds"]["run.seed"] == "3, 4"
    for name in ("slow", "fast"):
        loss = read(tmp_path / name / "summary.json")["final"]["loss_after"]
        assert by_run[name]["loss_after"] == f"{loss:.4g}"
    losses = [read(seeds / f"seed-{s}" / "summary.json")["final"]["loss_after"] for s in (3, 4)]
    assert by_run["seeds"]["loss_after"] == f"{np.mean(losses):.4g} ± {np.std(losses, ddof=1):.2g}"

    embedded = re.findall(r"src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page.read_text())
    assert embedded and all(base64.b64decode(png).startswith(b"\x89PNG") for png in embedded)


def test_compare_expands_a_sweep_into_its_cells(tmp_path, capsys):
    grid = run(tiny_config(tmp_path), tmp_path / "grid", "--sweep", "federated.rounds=1,2")
    capsys.readouterr()
    assert main(["compare", str(grid)]) == 0
    head, *rows = table(capsys.readouterr().out)
    assert head[1] == "federated.rounds" and [row[:2] for row in rows] == [
        ["grid/federated.rounds=1", "1"], ["grid/federated.rounds=2", "2"]]


def test_compare_refuses_a_folder_that_holds_no_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "RUN_OR_SWEEP" in err[0], err


def header(page: str) -> dict[str, str]:
    """The report's what-ran table: item -> text."""
    what = re.search(r"<table class='what'>(.*?)</table>", page).group(1)
    return dict(re.findall(r"<tr><th>(.*?)</th><td>(.*?)</td></tr>", what))


def test_report_header_names_the_algorithm_and_epsilon_of_a_dp_run(tmp_path):
    out = run(tiny_config(tmp_path), tmp_path / "dp", "--set", "privacy.dp='central'", "--set", "privacy.noise_seed=0",
              "--set", "meta.algorithm='fomaml'")
    summary = read(out / "summary.json")
    what = header(write_report(out).read_text())
    assert what["algorithm"] == "fomaml" and summary["algorithm"] == "fomaml"
    assert f"ε = {summary['epsilon']:.4g} at δ = {summary['delta']:g}" in what["privacy"]
    assert what["robust rule"] == "mean" and what["attack"] == "none"
    assert "<h2>Robustness</h2>" not in (out / "report.html").read_text()


def test_report_has_a_robustness_section_under_attack(tmp_path):
    out = run(tiny_config(tmp_path), tmp_path / "robust", "--set", "federated.robust.rule='median'",
              "--set", "federated.attack.name='sign_flip'", "--set", "federated.attack.fraction=0.34")
    page = write_report(out).read_text()
    assert header(page)["robust rule"] == "median" and header(page)["attack"] == "sign_flip (fraction = 0.34)"
    section = page[page.index("<h2>Robustness</h2>"):]
    rounds = {r["round"]: r for r in read_metrics(out / "metrics.jsonl") if r.get("round", 0) > 0}
    for number, row in rounds.items():
        assert f"<tr><td>{number}</td><td>{row['sampled']}</td><td>{row['clients']}</td>" \
               f"<td>{row['malicious']}</td><td>{len(row['rejected'])}</td></tr>" in section
