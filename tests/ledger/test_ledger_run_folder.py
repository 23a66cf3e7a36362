"""The ledger covers every file of a run folder a user relies on, and shows truncation.

Each tampering below passed `fedmeta ledger verify --public-key` before: a byte appended to
`model.pt`, the initial model changed or deleted, `config.toml` edited, the `end` entry and
its tree head deleted, the log cut back to 5 entries, another run's `ledger.db` and
`models/` swapped in (same server key), and a `--known-root` of size 0.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.errors import VerificationError
from fedmeta.ledger import verify_ledger

CONFIG = """
[run]
seed = 4
[data]
name = "sinusoid"
k_shot = 4
k_query = 4
[model]
name = "mlp"
hidden = [8]
[federated]
rounds = 3
n_clients = 6
held_out_clients = 2
clients_per_round = 3
local_steps = 1
tasks_per_step = 2
eval_every = 3
[ledger]
enabled = true
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path, str]:
    """Two finished runs of one config under one server key, and that key."""
    base = tmp_path_factory.mktemp("runs")
    mp = pytest.MonkeyPatch()
    mp.setenv("FEDMETA_HOME", str(base / "home"))
    (base / "fed.toml").write_text(CONFIG)
    for name in ("a", "b"):
        assert main(["run", str(base / "fed.toml"), "--out", str(base / name), "--no-progress"]) == 0
    mp.undo()
    key = json.loads((base / "a" / "summary.json").read_text())["ledger"]["server_public_key"]
    return base / "a", base / "b", key


@pytest.fixture
def run(runs, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(runs[0], copy)
    return copy


def entries(run: Path) -> list[dict]:
    with sqlite3.connect(run / "ledger.db") as db:
        return [json.loads(b) for (b,) in db.execute("SELECT body FROM entries ORDER BY idx")]


def cut_to(run: Path, size: int) -> None:
    """Delete entries and tree heads past `size`, as someone with write access could."""
    with sqlite3.connect(run / "ledger.db") as db:
        for trigger in ("entries_no_delete", "tree_heads_no_delete"):
            db.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        db.execute("DELETE FROM entries WHERE idx >= ?", (size,))
        db.execute("DELETE FROM tree_heads WHERE size > ?", (size,))


def refused(run: Path, key: str, match: str) -> None:
    with pytest.raises(VerificationError, match=match) as err:
        verify_ledger(run, public_key=key)
    assert "expected" in str(err.value) and "got" in str(err.value)


def test_a_finished_run_verifies_and_names_the_files_it_covers(runs, capsys):
    a, _, key = runs
    covered = verify_ledger(a, public_key=key)
    initial = entries(a)[0]["extra"]["initial_model_sha256"]
    assert {"config.toml", "model.pt", "personalization.json", f"models/{initial}.pt"} <= covered.keys()
    assert len([n for n in covered if n.startswith("models/")]) == 4  # initial + 3 rounds
    assert main(["ledger", "verify", str(a), "--public-key", key]) == 0
    out = capsys.readouterr().out
    assert "covers model.pt" in out and "covers config.toml" in out


def test_a_byte_appended_to_the_final_model(run, runs):
    with open(run / "model.pt", "ab") as f:
        f.write(b"\0")
    refused(run, runs[2], "model.pt of the end entry")


def test_personalization_changed(run, runs):
    (run / "personalization.json").write_text("{}\n")
    refused(run, runs[2], "personalization.json")


@pytest.mark.parametrize("how", ["changed", "deleted"])
def test_the_initial_model(run, runs, how):
    initial = run / "models" / f"{entries(run)[0]['extra']['initial_model_sha256']}.pt"
    if how == "deleted":
        initial.unlink()
    else:
        initial.write_bytes(initial.read_bytes() + b"\0")
    refused(run, runs[2], "of entry 0")


def test_an_edited_config(run, runs):
    (run / "config.toml").write_text((run / "config.toml").read_text().replace("seed = 4", "seed = 5"))
    refused(run, runs[2], "config.toml of the start entry")


def test_the_end_entry_and_its_tree_head_deleted(run, runs):
    cut_to(run, len(entries(run)) - 1)
    refused(run, runs[2], "sealed in summary.json")


def test_the_log_cut_back_to_three_entries(run, runs):
    cut_to(run, 3)
    refused(run, runs[2], "sealed in summary.json")


def test_the_log_cut_back_and_the_summary_deleted(run, runs):
    """Without summary.json the folder looks unfinished, but its checkpoint committed every
    round: a ledger cut below them shows. Cutting only the `end` entry leaves a state a crash
    can leave too; a tree head saved earlier (`--known-root`) shows that."""
    (run / "summary.json").unlink()
    cut_to(run, 4)
    verify_ledger(run, public_key=runs[2])
    with pytest.raises(VerificationError, match="known tree head"):
        verify_ledger(run, public_key=runs[2], known_head=(5, entries_root(runs[0], 5)))
    cut_to(run, 3)
    refused(run, runs[2], "checkpoint.pt committed them")


def entries_root(run: Path, size: int) -> str:
    with sqlite3.connect(run / "ledger.db") as db:
        return db.execute("SELECT root FROM tree_heads WHERE size = ?", (size,)).fetchone()[0].hex()


def test_another_runs_ledger_swapped_in(run, runs):
    _, b, key = runs
    (run / "ledger.db").unlink()
    shutil.rmtree(run / "models")
    shutil.copy(b / "ledger.db", run / "ledger.db")
    shutil.copytree(b / "models", run / "models")
    refused(run, key, "run id in summary.json")
    (run / "summary.json").unlink()  # and in an unfinished folder, the checkpoint binds it
    refused(run, key, "run id of checkpoint.pt")


def test_a_known_root_of_size_zero_is_refused(runs, capsys):
    a, _, key = runs
    assert main(["ledger", "verify", str(a), "--known-root", "0:" + "ff" * 32]) == 2
    assert "--known-root" in capsys.readouterr().err
