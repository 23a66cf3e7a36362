"""`fedmeta` starts without torch: help, keys, ledger and privacy commands import only what
they use; `--version`; per-round log lines when stderr is no terminal; ε on the `done:` line."""

from __future__ import annotations

import contextlib
import io
import json
import re
import subprocess
import sys
from importlib.metadata import version

import pytest

from fedmeta.cli import main
from fedmeta.progress import progress_bar

HEAVY = ("torch", "numpy", "scipy", "dp_accounting", "flwr", "tenseal", "matplotlib", "fedmeta.api")
ACCOUNTING = ("numpy", "scipy", "dp_accounting")
ROUND_LINE = re.compile(r"federated rounds (\d+)/2  loss_after=\S+ acc_after=\S+  \d+\.\d s")
DP_RUN = ["--set", "federated.rounds=2", "--set", "federated.n_clients=6", "--set", "federated.clients_per_round=4",
          "--set", "privacy.secure_aggregation='off'"]


def heavy_imports(args: list[str]) -> list[str]:
    """The heavy modules a fresh interpreter holds after `fedmeta.cli.main(args)` (exit 0)."""
    script = (
        "import json, sys\n"
        "from fedmeta.cli import main\n"
        f"rc = main({args!r})\n"
        f"print(json.dumps([rc, [m for m in {HEAVY!r} if m in sys.modules]]))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    rc, loaded = json.loads(done.stdout.splitlines()[-1])
    assert rc == 0, done.stderr
    return loaded


@pytest.mark.parametrize("args", [["--help"], ["run", "--help"], ["compare", "--help"], ["--version"]])
def test_help_imports_nothing_heavy(args):
    assert heavy_imports(args) == []


def test_keys_create_imports_nothing_heavy(tmp_path):
    assert heavy_imports(["keys", "create", "--out", str(tmp_path), "--name", "c0"]) == []
    assert (tmp_path / "c0.pub").is_file()


def test_privacy_epsilon_imports_only_the_accountant():
    args = ["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "0.01", "--steps", "100",
            "--delta", "1e-5", "--accountant", "rdp"]
    assert set(heavy_imports(args)) <= set(ACCOUNTING)


def test_privacy_help_states_the_accountants_limits():
    from fedmeta.cli.privacy import PLD_LIMITS
    from fedmeta.privacy.accountant import MAX_PLD_EPSILON, MAX_PLD_STEPS

    assert PLD_LIMITS == f"at most {MAX_PLD_STEPS:,} steps and ε <= {MAX_PLD_EPSILON:g}"


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"fedmeta {version('fedmeta')}\n"


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory):
    """A two-round DP demo run with stdout and stderr captured (no terminal):
    (run folder, stdout, stderr)."""
    tmp = tmp_path_factory.mktemp("dp")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        mp.setenv("FEDMETA_HOME", str(tmp / "home"))
        assert main(["run", "--out", str(tmp / "r"), *DP_RUN]) == 0
    return tmp / "r", out.getvalue(), err.getvalue()


def test_progress_without_a_terminal_is_one_line_per_round(dp_run):
    _, _, err = dp_run
    rounds = [int(m.group(1)) for line in err.splitlines() if (m := ROUND_LINE.fullmatch(line))]
    assert rounds == [1, 2], err


def test_done_line_states_epsilon_and_delta(dp_run):
    folder, out, _ = dp_run
    summary = json.loads((folder / "summary.json").read_text())
    done = out.splitlines()[-1]
    assert done.startswith("done: ") and f"ε={summary['epsilon']:.4g} at δ=1e-05 (RDP)" in done, done


def test_ledger_verify_imports_nothing_heavy(dp_run):
    folder, _, _ = dp_run
    assert heavy_imports(["ledger", "verify", str(folder)]) == []


def test_no_progress_prints_nothing(capsys):
    with progress_bar(3, 0, "steps", show=False) as advance:
        for _ in range(3):
            advance(loss=1.0)
    assert capsys.readouterr() == ("", "")


def test_long_progress_logs_at_most_a_hundred_lines(capsys):
    with progress_bar(1001, 0, "steps") as advance:
        for _ in range(1001):
            advance(loss=1.0)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 101 and lines[-1].startswith("steps 1001/1001  loss=1  "), lines[-3:]
