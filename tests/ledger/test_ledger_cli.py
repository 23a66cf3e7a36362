"""`fedmeta ledger` / `fedmeta keys` commands and the standalone proof checker."""

from __future__ import annotations

import copy
import json
import sqlite3
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.ledger import keys
from fedmeta.ledger.standalone import ProofError, verify_proof_document


def test_verify_good_ledger_exits_0(run, capsys):
    assert main(["ledger", "verify", str(run.dir), "--public-key", run.server_public]) == 0
    out = capsys.readouterr().out
    assert "ok: 6 entries, 6 signed tree heads" in out and "(pinned)" in out


def test_verify_tampered_ledger_exits_nonzero_with_expected_got(run, capsys):
    conn = sqlite3.connect(run.dir / "ledger.db", isolation_level=None)
    conn.execute("DROP TRIGGER entries_no_update")
    conn.execute("UPDATE entries SET body = CAST(? AS BLOB) WHERE idx = 3", (b'{"type":"round"}',))
    conn.close()
    assert main(["ledger", "verify", str(run.dir / "ledger.db")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("fedmeta: failed: leaf hash of entry 3: expected ")
    assert ", got " in err and len(err.splitlines()) == 1


def test_verify_wrong_pinned_key_and_bad_input(run, capsys):
    other = keys.public_key_hex(keys.generate())
    assert main(["ledger", "verify", str(run.dir), "--public-key", other]) == 1
    assert f"expected {other}, got {run.server_public}" in capsys.readouterr().err
    assert main(["ledger", "verify", str(run.dir), "--public-key", "beef"]) == 2
    assert "--public-key = 'beef'" in capsys.readouterr().err
    assert main(["ledger", "verify", str(run.dir), "--known-root", "3:xyz"]) == 2
    assert "--known-root" in capsys.readouterr().err
    assert main(["ledger", "verify", str(run.dir / "nothing")]) == 2


def test_show_lists_rounds_models_and_epsilon(run, capsys):
    assert main(["ledger", "show", str(run.dir)]) == 0
    out = capsys.readouterr().out
    for r, model in enumerate(run.models[1:], start=1):
        assert model[:12] in out
        assert f"{0.5 * r:.4g}" in out
    assert "client-0: replay" in out


def _prove(run, capsys, entry: int) -> dict:
    assert main(["ledger", "prove", str(run.dir), "--entry", str(entry)]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("entry", range(6))
def test_standalone_accepts_prove_output(run, capsys, entry):
    doc = _prove(run, capsys, entry)
    assert doc["index"] == entry and doc["tree_size"] == 6
    assert verify_proof_document(doc, public_key_hex=run.server_public) is None


def test_standalone_rejects_modified_proofs(run, capsys):
    doc = _prove(run, capsys, 3)
    other_key = keys.generate()
    mutations = {
        "entry": lambda d: d.update(entry=d["entry"].replace("fedavg", "krum")),
        "index": lambda d: d.update(index=2),
        "tree_size": lambda d: d.update(tree_size=7),
        "proof": lambda d: d["proof"].__setitem__(0, "00" * 32),
        "short proof": lambda d: d["proof"].pop(),
        "root": lambda d: d.update(root="11" * 32),
        "timestamp": lambda d: d.update(timestamp_ms=d["timestamp_ms"] + 1),
        "signature": lambda d: d.update(signature="22" * 64),
        "key": lambda d: d.update(public_key=keys.public_key_hex(other_key)),
        "hex": lambda d: d["proof"].__setitem__(0, "not hex"),
        "missing": lambda d: d.pop("signature"),
    }
    for name, mutate in mutations.items():
        bad = copy.deepcopy(doc)
        mutate(bad)
        with pytest.raises(ProofError, match="expected .*, got "):
            verify_proof_document(bad)
        if name == "key":
            with pytest.raises(ProofError, match="server public key"):
                verify_proof_document(bad, public_key_hex=run.server_public)


def test_standalone_is_self_contained():
    import fedmeta.ledger.standalone as module

    source = Path(module.__file__).read_text()
    assert "from fedmeta" not in source and "import fedmeta" not in source


def test_verify_known_root_from_prove_output(run, capsys):
    doc = _prove(run, capsys, 0)
    known = f"{doc['tree_size']}:{doc['root']}"
    assert main(["ledger", "verify", str(run.dir), "--known-root", known]) == 0
    assert main(["ledger", "verify", str(run.dir), "--known-root", f"5:{doc['root']}"]) == 1
    assert "known tree head (size 5)" in capsys.readouterr().err


def test_prove_bad_entry_is_exit_2(run, capsys):
    assert main(["ledger", "prove", str(run.dir), "--entry", "6"]) == 2
    assert "--entry = 6" in capsys.readouterr().err


def test_keys_create(tmp_path, capsys):
    assert main(["keys", "create", "--out", str(tmp_path), "--name", "hospital-a"]) == 0
    public = capsys.readouterr().out.strip()
    key = keys.load_private_key(tmp_path / "hospital-a.pem")
    assert keys.public_key_hex(key) == public
    assert main(["keys", "create", "--out", str(tmp_path), "--name", "hospital-a"]) == 2
