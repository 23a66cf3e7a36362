"""The signed run ledger: a good one verifies; every kind of tampering is caught.

The tampering goes behind the library's back with the `sqlite3` module (dropping the
append-only triggers first), or edits model files, as an attacker with the folder would.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from ledger_runs import RUN_ID, Run, build_run

from fedmeta.errors import BadInput, VerificationError
from fedmeta.ledger import Ledger, RunLedger, keys, store_model, verify_ledger
from fedmeta.ledger.log import TREE_HEAD_DOMAIN
from fedmeta.ledger.merkle import MerkleTree, leaf_hash


def db(run: Run) -> sqlite3.Connection:
    conn = sqlite3.connect(run.dir / "ledger.db", isolation_level=None)
    for name in (
        "entries_no_update",
        "entries_no_delete",
        "tree_heads_no_update",
        "tree_heads_no_delete",
    ):
        conn.execute(f"DROP TRIGGER {name}")
    return conn


def fails(run: Run, match: str | None = None, **kwargs) -> VerificationError:
    with pytest.raises(VerificationError, match=match) as info:
        verify_ledger(run.dir, **kwargs)
    assert "expected" in str(info.value) and "got" in str(info.value)
    return info.value


def test_good_run_verifies_from_dir_and_db(run):
    covered = verify_ledger(run.dir, public_key=run.server_public)
    assert covered == {f"models/{sha}.pt": sha for sha in run.models[1:]}  # every round's model
    assert verify_ledger(run.dir / "ledger.db") == covered


def test_stored_bytes_are_canonical_and_hashed_per_rfc(run):
    conn = sqlite3.connect(run.dir / "ledger.db")
    rows = conn.execute("SELECT idx, body, leaf_hash FROM entries ORDER BY idx").fetchall()
    assert [r[0] for r in rows] == list(range(6))
    for _, body, stored in rows:
        obj = json.loads(body)
        assert (
            body
            == json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        )
        assert stored == hashlib.sha256(b"\x00" + body).digest()
    assert [json.loads(r[1])["type"] for r in rows] == [
        "start",
        "round",
        "rejection",
        "round",
        "round",
        "end",
    ]
    sizes = [s for (s,) in conn.execute("SELECT size FROM tree_heads ORDER BY size")]
    assert sizes == [1, 2, 3, 4, 5, 6]  # one signed head per append


def test_tree_head_signature_covers_the_documented_message(run):
    conn = sqlite3.connect(run.dir / "ledger.db")
    size, root, ts, sig = conn.execute(
        "SELECT size, root, timestamp_ms, signature FROM tree_heads"
    ).fetchone()
    message = TREE_HEAD_DOMAIN + size.to_bytes(8, "big") + ts.to_bytes(8, "big") + root
    run.server_key.public_key().verify(sig, message)


def test_triggers_refuse_edits(run):
    conn = sqlite3.connect(run.dir / "ledger.db")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE entries SET body = x'00' WHERE idx = 1")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM tree_heads")


@pytest.mark.parametrize("idx", range(6))
def test_changed_entry_is_caught(run, idx):
    conn = db(run)
    body = conn.execute("SELECT body FROM entries WHERE idx = ?", (idx,)).fetchone()[0]
    forged = body + b" "
    conn.execute("UPDATE entries SET body = ? WHERE idx = ?", (forged, idx))
    fails(run, f"leaf hash of entry {idx}: expected {leaf_hash(forged).hex()}")


def test_changed_entry_with_recomputed_leaf_hash_breaks_the_signed_root(run):
    conn = db(run)
    body = conn.execute("SELECT body FROM entries WHERE idx = 3").fetchone()[0]
    forged = body.replace(b'"aggregation":"fedavg"', b'"aggregation":"krum"')
    assert forged != body
    conn.execute(
        "UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = 3", (forged, leaf_hash(forged))
    )
    fails(run, "root of tree head at size 4")


def test_deleted_last_entry_is_caught(run):
    db(run).execute("DELETE FROM entries WHERE idx = 5")
    fails(run, "entries under tree head at size 6: expected 6, got 5")


def test_deleted_middle_entry_is_caught(run):
    db(run).execute("DELETE FROM entries WHERE idx = 2")
    fails(run, "entry index: expected 2, got 3")


def test_reordered_entries_are_caught(run):
    conn = db(run)
    rows = conn.execute("SELECT idx, body, leaf_hash FROM entries WHERE idx IN (1, 2)").fetchall()
    conn.execute("UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = 1", rows[1][1:])
    conn.execute("UPDATE entries SET body = ?, leaf_hash = ? WHERE idx = 2", rows[0][1:])
    fails(run, "root of tree head at size 2")


def test_inserted_entry_is_caught(run):
    body = b'{"type":"rejection"}'
    conn = db(run)
    conn.execute("INSERT INTO entries VALUES (6, ?, ?)", (body, leaf_hash(body)))
    fails(run, "entries covered by the latest signed tree head: expected 6, got 7")


def test_shifted_history_is_caught(run):
    """Insert an entry in the middle and renumber the rest, hashes and all."""
    conn = db(run)
    rows = conn.execute("SELECT idx, body FROM entries ORDER BY idx").fetchall()
    conn.execute("DELETE FROM entries")
    bodies = [b for _, b in rows]
    bodies.insert(1, b'{"type":"rejection"}')
    conn.executemany(
        "INSERT INTO entries VALUES (?, ?, ?)", [(i, b, leaf_hash(b)) for i, b in enumerate(bodies)]
    )
    fails(run, "root of tree head at size 2")


def test_changed_model_file_is_caught(run):
    path = run.dir / "models" / f"{run.models[2]}.pt"
    path.write_bytes(b"poisoned weights")
    fails(
        run,
        f"models/{run.models[2]}.pt of entry 3: expected {run.models[2]}, got "
        + hashlib.sha256(b"poisoned weights").hexdigest(),
    )


def test_missing_model_file_is_caught(run):
    (run.dir / "models" / f"{run.models[-1]}.pt").unlink()
    fails(run, "got no file")


def test_forged_tree_head_signature_is_caught(run):
    conn = db(run)
    sig = conn.execute("SELECT signature FROM tree_heads WHERE size = 3").fetchone()[0]
    conn.execute(
        "UPDATE tree_heads SET signature = ? WHERE size = 3", (bytes([sig[0] ^ 1]) + sig[1:],)
    )
    fails(run, "signature of tree head at size 3")


def test_changed_tree_head_root_is_caught(run):
    conn = db(run)
    conn.execute("UPDATE tree_heads SET root = ? WHERE size = 2", (b"\x00" * 32,))
    fails(run, "signature of tree head at size 2")


def test_rewritten_ledger_is_caught_only_with_the_pinned_key(run, tmp_path):
    """A forger who rebuilds the whole ledger with their own key: self-consistent, wrong key."""
    forger = keys.generate()
    with Ledger.open(run.dir) as original:
        entries = [json.loads(body) for _, body, _ in original.entries()]
    entries[0]["server_public_key"] = keys.public_key_hex(forger)
    (run.dir / "ledger.db").unlink()
    with Ledger.create(run.dir, forger) as forged:
        forged.append(entries)
    verify_ledger(run.dir)  # nothing to compare against: it holds together
    fails(run, f"server public key: expected {run.server_public}", public_key=run.server_public)


def test_parent_chain_is_checked_even_when_signed(tmp_path):
    """The run API refuses a broken chain; a signed but broken one is still caught."""
    run = build_run(tmp_path / "run", rounds=1)
    with RunLedger.open(run.dir, run.server_key) as ledger:
        other = store_model(run.dir, b"unrelated")
        with pytest.raises(BadInput, match="parent_sha256"):
            ledger.round(2, other, other, [], {}, "fedavg", None, None, {}, [])
    conn = db(run)
    conn.execute("DELETE FROM entries WHERE idx = 2")  # drop `end`, then append a bad round
    conn.execute("DELETE FROM tree_heads WHERE size = 3")
    conn.close()
    with Ledger.open(run.dir, run.server_key) as raw:
        raw.append([{"type": "round", "round": 2, "model_sha256": other, "parent_sha256": other}])
    fails(run, f"parent model of round 2: expected {run.models[1]}, got {other}")


def test_run_ledger_resumes_and_refuses_misuse(run):
    with RunLedger.open(run.dir) as reader:
        assert reader.run_id == RUN_ID and reader.last_round == 3 and reader.ended
        with pytest.raises(BadInput, match="server's private key"):
            reader.ledger.append([{"type": "x"}])
    with pytest.raises(BadInput, match="the ledger's key"):
        RunLedger.open(run.dir, keys.generate())
    with (
        RunLedger.open(run.dir, run.server_key) as writer,
        pytest.raises(BadInput, match="only anchors after the `end`"),
    ):
        writer.rejection(4, "client-0", "replay")
    with pytest.raises(BadInput, match="no ledger exists"):
        RunLedger.create(run.dir, run.server_key)


def test_round_needs_stored_model_and_start(tmp_path):
    with RunLedger.create(tmp_path, keys.generate()) as ledger:
        with pytest.raises(BadInput, match="`start` entry first"):
            ledger.rejection(1, "c", "unknown_key")
        ledger.start("cfg", "0.1", {})
        with pytest.raises(BadInput, match="store_model"):
            ledger.round(1, "ab" * 32, "cd" * 32, [], {}, "fedavg", None, None, {}, [])
        with pytest.raises(BadInput, match="finite numbers"):
            ledger.rejection(1, "c", "replay", float("nan"))  # type: ignore[arg-type]


def test_rejections_are_recorded(run):
    with Ledger.open(run.dir) as ledger:
        entries = [json.loads(body) for _, body, _ in ledger.entries()]
    assert entries[2]["type"] == "rejection" and entries[2]["reason"] == "replay"
    assert entries[2]["round"] == 2 and "for round 1" in entries[2]["detail"]
    assert entries[3]["rejected"] == [{k: v for k, v in entries[2].items() if k != "type"}]


def test_batched_appends_sign_one_head_per_batch(tmp_path):
    key = keys.generate()
    with Ledger.create(tmp_path / "ledger.db", key) as ledger:
        for b in range(4):
            ledger.append([{"type": "metric", "i": b * 10 + i} for i in range(10)])
        heads = ledger.tree_heads()
        assert [h.size for h in heads] == [10, 20, 30, 40]
        bodies = [body for _, body, _ in ledger.entries()]
        expected = MerkleTree([hashlib.sha256(b"\x00" + body).digest() for body in bodies])
        assert [h.root for h in heads] == [expected.root(s) for s in (10, 20, 30, 40)]
    verify_ledger(tmp_path / "ledger.db", public_key=keys.public_key_hex(key))


def test_not_a_ledger_is_bad_input(tmp_path):
    with pytest.raises(BadInput):
        verify_ledger(tmp_path)
    (tmp_path / "ledger.db").write_bytes(b"garbage" * 100)
    with pytest.raises(BadInput):
        verify_ledger(tmp_path)


def test_known_head_catches_truncation_and_rewrites_by_the_key_holder(run):
    with Ledger.open(run.dir) as ledger:
        heads = ledger.tree_heads()
    saved = (heads[3].size, heads[3].root.hex())
    verify_ledger(run.dir, known_head=saved)
    conn = db(run)  # cut the ledger back to 3 entries: still a valid signed ledger
    conn.execute("DELETE FROM entries WHERE idx >= 3")
    conn.execute("DELETE FROM tree_heads WHERE size > 3")
    conn.close()
    verify_ledger(run.dir)
    fails(run, "size of the tree head at size 3: expected >= known tree head 4", known_head=saved)
    with Ledger.open(run.dir, run.server_key) as ledger:  # the key holder rewrites entry 3
        ledger.append(
            [{"type": "rejection", "round": 2, "client_id": "x", "reason": "", "detail": ""}]
        )
    verify_ledger(run.dir)
    fails(
        run, r"known tree head \(size 4\) is a prefix of the tree head at size 4", known_head=saved
    )
    with pytest.raises(BadInput, match="known_head"):
        verify_ledger(run.dir, known_head=(4, "xyz"))


def test_only_anchors_may_follow_the_end(tmp_path):
    run = build_run(tmp_path / "run", rounds=1)
    with Ledger.open(run.dir, run.server_key) as raw:
        raw.append([{"type": "rejection", "round": 9, "client_id": "x", "reason": "replay"}])
    with pytest.raises(
        VerificationError, match="after the end entry: expected anchor, got rejection"
    ):
        verify_ledger(run.dir)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    batches=st.lists(st.integers(1, 5), min_size=1, max_size=6),
    op=st.sampled_from(["change", "delete", "swap", "insert"]),
    data=st.data(),
)
def test_any_rewrite_without_the_key_is_caught(batches, op, data):
    """Random batched ledgers; one edit, leaf hashes recomputed and indices kept contiguous."""
    key = keys.generate()
    shm = Path("/dev/shm")  # memory-backed where available: the fsyncs are not under test
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        path = Path(tmp) / "ledger.db"
        with Ledger.create(path, key) as ledger:
            for b, n in enumerate(batches):
                ledger.append([{"type": "metric", "batch": b, "i": i} for i in range(n)])
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("DROP TRIGGER entries_no_update")
        conn.execute("DROP TRIGGER entries_no_delete")
        bodies = [bytes(b) for (b,) in conn.execute("SELECT body FROM entries ORDER BY idx")]
        i = data.draw(st.integers(0, len(bodies) - 1))
        if op == "change":
            bodies[i] = bodies[i].replace(b'"type":"metric"', b'"type":"metriC"')
        elif op == "delete":
            del bodies[i]
        elif op == "swap":
            assume(len(set(bodies)) > 1)
            j = data.draw(st.integers(0, len(bodies) - 1).filter(lambda j: bodies[j] != bodies[i]))
            bodies[i], bodies[j] = bodies[j], bodies[i]
        else:
            bodies.insert(i, b'{"type":"metric","forged":true}')
        conn.execute("DELETE FROM entries")
        conn.executemany(
            "INSERT INTO entries VALUES (?, ?, ?)",
            [(k, b, leaf_hash(b)) for k, b in enumerate(bodies)],
        )
        conn.close()
        with pytest.raises(VerificationError):
            verify_ledger(path, public_key=keys.public_key_hex(key))
