"""Append-only Merkle log in SQLite with a signed tree head after every batch.

A transparency log in the sense of RFC 9162 §4 (Certificate Transparency v2), kept in one
`ledger.db`: table `entries` holds (index, canonical JSON bytes, leaf hash), table
`tree_heads` holds (size, root, timestamp, Ed25519 signature, key id). Triggers refuse
UPDATE and DELETE, but nothing relies on them: `fedmeta.ledger.verify` recomputes every
hash from the bytes. A tree head signs `TREE_HEAD_DOMAIN || size || timestamp_ms || root`
(both integers 8-byte big-endian) -- fixed-width fields, so the message is unambiguous.
"""

from __future__ import annotations

import os
import sqlite3
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmeta.errors import BadInput
from fedmeta.ledger import keys
from fedmeta.ledger.canonical import canonical_json
from fedmeta.ledger.merkle import MerkleTree, leaf_hash

TREE_HEAD_DOMAIN = b"fedmeta/tree-head/v1\x00"
LEDGER_FILE = "ledger.db"
FORMAT = "fedmeta-ledger/1"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE entries (idx INTEGER PRIMARY KEY, body BLOB NOT NULL, leaf_hash BLOB NOT NULL);
CREATE TABLE tree_heads (
    size INTEGER PRIMARY KEY, root BLOB NOT NULL, timestamp_ms INTEGER NOT NULL,
    signature BLOB NOT NULL, key_id TEXT NOT NULL
);
CREATE TRIGGER entries_no_update BEFORE UPDATE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER entries_no_delete BEFORE DELETE ON entries
    BEGIN SELECT RAISE(ABORT, 'ledger entries are append-only'); END;
CREATE TRIGGER tree_heads_no_update BEFORE UPDATE ON tree_heads
    BEGIN SELECT RAISE(ABORT, 'tree heads are append-only'); END;
CREATE TRIGGER tree_heads_no_delete BEFORE DELETE ON tree_heads
    BEGIN SELECT RAISE(ABORT, 'tree heads are append-only'); END;
"""


def tree_head_message(size: int, timestamp_ms: int, root: bytes) -> bytes:
    return TREE_HEAD_DOMAIN + struct.pack(">QQ", size, timestamp_ms) + root


@dataclass(frozen=True)
class TreeHead:
    """A signed statement "the log had `size` entries with Merkle root `root`"."""

    size: int
    root: bytes
    timestamp_ms: int
    signature: bytes
    key_id: str

    def message(self) -> bytes:
        return tree_head_message(self.size, self.timestamp_ms, self.root)

    def verify(self, public_hex: str) -> None:
        """Return None if the signature is `public_hex`'s over this head, else raise."""
        keys.verify_signature(
            public_hex,
            self.message(),
            self.signature,
            f"signature of tree head at size {self.size}",
        )


def ledger_path(path: str | Path) -> Path:
    """`ledger.db` itself, or the one inside a run folder."""
    path = Path(path)
    return path / LEDGER_FILE if path.is_dir() else path


class Ledger:
    """One open `ledger.db`: read it, or append batches when holding the server key."""

    def __init__(
        self, conn: sqlite3.Connection, path: Path, key: Ed25519PrivateKey | None, wal: bool = True
    ):
        self._conn, self.path, self._key = conn, path, key
        self.public_key = self._meta("public_key")
        if key is not None and keys.public_key_hex(key) != self.public_key:
            raise BadInput(
                "server key", keys.public_key_hex(key), f"the ledger's key {self.public_key}"
            )
        self.clock: Callable[[], int] = lambda: time.time_ns() // 1_000_000
        if key is not None and wal:  # one fsync per batch while writing; one file at rest
            conn.execute("PRAGMA journal_mode=WAL")
        self._tree_cache: MerkleTree | None = None

    @classmethod
    def create(
        cls, path: str | Path, server_key: Ed25519PrivateKey, first: Sequence[dict[str, Any]] = ()
    ) -> Ledger:
        """A new ledger at `path`; with `first`, it appears whole or not at all: built with
        its first batch and signed tree head in a temporary file, then renamed into place,
        so a crash never leaves a ledger without its first entries."""
        path = ledger_path(path)
        if path.exists():
            raise BadInput("ledger", str(path), "a path where no ledger exists yet")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        for stale in (tmp, tmp.with_name(tmp.name + "-journal")):
            stale.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp)
        try:
            with conn:
                conn.executescript("PRAGMA synchronous=FULL;" + _SCHEMA)
                conn.executemany(
                    "INSERT INTO meta VALUES (?, ?)",
                    [("format", FORMAT), ("public_key", keys.public_key_hex(server_key))],
                )
            if first:
                cls(conn, tmp, server_key, wal=False).append(first)
            conn.close()
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            conn.close()
            tmp.unlink(missing_ok=True)
            raise
        return cls.open(path, server_key)

    @classmethod
    def open(cls, path: str | Path, server_key: Ed25519PrivateKey | None = None) -> Ledger:
        """Open read-only without a key; with the server key, appends are allowed."""
        path = ledger_path(path)
        if not path.is_file():
            raise BadInput("ledger", str(path), "a ledger.db file or a run folder holding one")
        uri = f"file:{path}" + ("" if server_key else "?mode=ro")
        conn = sqlite3.connect(uri, uri=True)
        try:
            conn.execute("SELECT idx, body, leaf_hash FROM entries LIMIT 0")
            conn.execute(
                "SELECT size, root, timestamp_ms, signature, key_id FROM tree_heads LIMIT 0"
            )
        except sqlite3.DatabaseError as err:
            conn.close()
            raise BadInput("ledger", str(path), f"a fedmeta ledger database ({err})") from None
        return cls(conn, path, server_key)

    def close(self) -> None:
        if self._key is not None:
            try:  # back to one file at rest, unless a reader has the ledger open right now
                self._conn.execute("PRAGMA journal_mode=DELETE")
            except sqlite3.OperationalError:
                pass
        self._conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _meta(self, key: str) -> str:
        row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise BadInput("ledger", str(self.path), f"a ledger with meta key {key!r}")
        return row[0]

    @property
    def _tree(self) -> MerkleTree:
        """The tree over the stored leaf hashes, loaded on first use (verify never uses it)."""
        if self._tree_cache is None:
            rows = self._conn.execute("SELECT leaf_hash FROM entries ORDER BY idx")
            self._tree_cache = MerkleTree([bytes(h) for (h,) in rows])
        return self._tree_cache

    @property
    def size(self) -> int:
        return self._tree.size

    def append(self, entries: Sequence[dict[str, Any]]) -> TreeHead:
        """Append a batch in one transaction and sign the tree head that covers it."""
        if self._key is None:
            raise BadInput("server key", None, "the server's private key to append to the ledger")
        if not entries:
            raise BadInput("entries", [], "a non-empty batch")
        bodies = [canonical_json(e) for e in entries]
        leaves = [leaf_hash(b) for b in bodies]
        start = self._tree.size
        try:
            with self._conn:
                self._conn.executemany(
                    "INSERT INTO entries VALUES (?, ?, ?)",
                    ((start + i, b, h) for i, (b, h) in enumerate(zip(bodies, leaves))),
                )
                self._tree.extend(leaves)
                size, root, now = self._tree.size, self._tree.root(), self.clock()
                head = TreeHead(
                    size,
                    root,
                    now,
                    keys.sign(self._key, tree_head_message(size, now, root)),
                    keys.key_id(self.public_key),
                )
                self._conn.execute(
                    "INSERT INTO tree_heads VALUES (?, ?, ?, ?, ?)",
                    (head.size, head.root, head.timestamp_ms, head.signature, head.key_id),
                )
        except BaseException:
            self._tree_cache = None  # the transaction rolled back; so does the tree
            raise
        return head

    def entries(self) -> Iterator[tuple[int, bytes, bytes]]:
        """(index, body, stored leaf hash) in index order, as stored."""
        for idx, body, stored in self._conn.execute(
            "SELECT idx, body, leaf_hash FROM entries ORDER BY idx"
        ):
            yield idx, bytes(body), bytes(stored)

    def entry(self, index: int) -> bytes:
        row = self._conn.execute("SELECT body FROM entries WHERE idx = ?", (index,)).fetchone()
        if row is None:
            raise BadInput("entry", index, f"an index in [0, {self.size})")
        return bytes(row[0])

    def tree_heads(self) -> list[TreeHead]:
        rows = self._conn.execute(
            "SELECT size, root, timestamp_ms, signature, key_id FROM tree_heads ORDER BY size"
        )
        return [TreeHead(s, bytes(r), t, bytes(sig), k) for s, r, t, sig, k in rows]

    def prove(self, index: int) -> dict[str, Any]:
        """Inclusion proof of entry `index` under the latest signed tree head, JSON-ready.

        `fedmeta.ledger.standalone.verify_proof_document` checks it with hashlib and the
        public key alone.
        """
        heads = self.tree_heads()
        if not heads:
            raise BadInput("ledger", str(self.path), "a ledger with a signed tree head")
        head = heads[-1]
        if not 0 <= index < head.size:
            raise BadInput("entry", index, f"an index in [0, {head.size})")
        return {
            "entry": self.entry(index).decode(),
            "index": index,
            "tree_size": head.size,
            "proof": [h.hex() for h in self._tree.inclusion_proof(index, head.size)],
            "root": head.root.hex(),
            "timestamp_ms": head.timestamp_ms,
            "signature": head.signature.hex(),
            "public_key": self.public_key,
            "key_id": head.key_id,
        }
