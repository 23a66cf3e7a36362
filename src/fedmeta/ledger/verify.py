"""Full verification of a run ledger from its bytes, trusting nothing the database says.

Recomputes every leaf hash and the Merkle tree (RFC 9162 §2.1), checks every signed tree
head (signature, root at its size, consistency proof from the previous head, §2.1.4),
that the latest head covers every entry, every model file's SHA-256, the parent chain of
the rounds, and, given a chain, every anchored root. Returns None or raises
`VerificationError` at the first failure with expected vs got.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from fedmeta.errors import BadInput, VerificationError
from fedmeta.ledger import keys
from fedmeta.ledger.log import Ledger, TreeHead
from fedmeta.ledger.merkle import EMPTY_ROOT, HASH_SIZE, MerkleTree, leaf_hash, verify_consistency
from fedmeta.ledger.run import MODELS_DIR, model_path


def verify_ledger(
    path: str | Path,
    public_key: str | None = None,
    anchor: Any = None,
    known_head: tuple[int, str] | None = None,
) -> None:
    """Verify `ledger.db` (or the run folder holding it).

    `public_key` pins the server key (hex); without it the key stored in the ledger is
    used, which only shows the ledger is self-consistent. `anchor` is a `web3.Web3`
    connected to the chain holding the anchors; without it anchors are not looked up.
    `known_head` is a (size, root hex) the auditor saved earlier, e.g. from `prove`: the
    latest head must extend it (RFC 9162 consistency proof), which catches a ledger cut
    back or rewritten since, even by the key's holder.
    """
    if public_key is not None:
        keys.load_public_key(public_key)
    if known_head is not None:
        _check_known_head(known_head)
    with Ledger.open(path) as ledger:
        try:
            _verify(ledger, public_key, anchor, known_head)
        except sqlite3.DatabaseError as err:
            raise VerificationError(
                "ledger database", "a readable SQLite ledger", str(err)
            ) from None


def _check_known_head(known_head: tuple[int, str]) -> None:
    size, root_hex = known_head
    try:
        ok = isinstance(size, int) and size >= 0 and len(bytes.fromhex(root_hex)) == HASH_SIZE
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise BadInput("known_head", known_head, "(tree size >= 0, 64 hex characters of its root)")


def _verify(
    ledger: Ledger, pinned: str | None, anchor: Any, known_head: tuple[int, str] | None
) -> None:
    server_key = pinned or ledger.public_key
    if ledger.public_key != server_key:
        raise VerificationError("server public key", server_key, ledger.public_key)
    tree = MerkleTree()
    entries: list[dict[str, Any]] = []
    for idx, body, stored in ledger.entries():
        if idx != tree.size:
            raise VerificationError("entry index", tree.size, idx)
        computed = leaf_hash(body)
        if computed != stored:
            raise VerificationError(f"leaf hash of entry {idx}", computed.hex(), stored.hex())
        tree.append(computed)
        entries.append(_parse(idx, body))
    heads = ledger.tree_heads()
    _check_tree_heads(heads, tree, server_key)
    if known_head is not None:
        size, root_hex = known_head
        latest = heads[-1] if heads else TreeHead(0, EMPTY_ROOT, 0, b"", "")
        _check_consistency(tree, size, bytes.fromhex(root_hex), latest, "known tree head")
    _check_entries(entries, ledger.path.parent, server_key, tree, anchor)


def _parse(idx: int, body: bytes) -> dict[str, Any]:
    try:
        entry = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise VerificationError(f"entry {idx}", "JSON", f"unparseable ({err})") from None
    if not isinstance(entry, dict):
        raise VerificationError(f"entry {idx}", "a JSON object", body[:80])
    return entry


def _check_tree_heads(heads: list[TreeHead], tree: MerkleTree, server_key: str) -> None:
    expected_key_id = keys.key_id(server_key)
    previous: TreeHead | None = None
    for head in heads:
        where = f"tree head at size {head.size}"
        if head.key_id != expected_key_id:
            raise VerificationError(f"key id of {where}", expected_key_id, head.key_id)
        head.verify(server_key)
        if head.size > tree.size:
            raise VerificationError(f"entries under {where}", head.size, tree.size)
        computed = tree.root(head.size)
        if computed != head.root:
            raise VerificationError(f"root of {where}", head.root.hex(), computed.hex())
        if previous is not None:
            if head.timestamp_ms < previous.timestamp_ms:
                raise VerificationError(
                    f"timestamp of {where}", f">= {previous.timestamp_ms}", head.timestamp_ms
                )
            # implied by the root checks here; it is what an auditor holding only the heads runs
            _check_consistency(tree, previous.size, previous.root, head, "previous tree head")
        previous = head
    signed = previous.size if previous else 0
    if signed != tree.size:
        raise VerificationError("entries covered by the latest signed tree head", signed, tree.size)


def _check_consistency(tree: MerkleTree, size: int, root: bytes, head: TreeHead, what: str) -> None:
    if size > head.size:
        raise VerificationError(
            f"size of the tree head at size {head.size}", f">= {what} {size}", head.size
        )
    try:
        verify_consistency(
            size, head.size, root, head.root, tree.consistency_proof(size, head.size)
        )
    except VerificationError as err:
        raise VerificationError(
            f"{what} (size {size}) is a prefix of the tree head at size {head.size}",
            err.expected,
            err.got,
        ) from None


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _check_model(run_dir: Path, sha256_hex: str, idx: int) -> None:
    path = model_path(run_dir, sha256_hex)
    got = _file_sha256(path) if path.is_file() else "no file"
    if got != sha256_hex:
        raise VerificationError(f"{MODELS_DIR}/{path.name} of entry {idx}", sha256_hex, got)


class _RunState:
    def __init__(self, run_dir: Path, server_key: str, tree: MerkleTree, anchor: Any):
        self.run_dir, self.server_key, self.tree, self.anchor = run_dir, server_key, tree, anchor
        self.ended = False
        self.last_round: int | None = None
        self.last_model: str | None = None


def _check_entries(
    entries: list[dict[str, Any]], run_dir: Path, server_key: str, tree: MerkleTree, anchor: Any
) -> None:
    state = _RunState(run_dir, server_key, tree, anchor)
    for idx, entry in enumerate(entries):
        try:
            _check_entry(idx, entry, state)
        except (KeyError, TypeError, ValueError) as err:
            raise VerificationError(
                f"fields of entry {idx}", "the fields of its type", repr(err)
            ) from None


def _check_entry(idx: int, entry: dict[str, Any], state: _RunState) -> None:
    kind = entry.get("type")
    if state.ended and kind != "anchor":
        raise VerificationError(f"type of entry {idx}, after the end entry", "anchor", kind)
    if kind == "start":
        if idx != 0:
            raise VerificationError("position of the start entry", 0, idx)
        if entry.get("server_public_key") != state.server_key:
            raise VerificationError(
                "server key in the start entry", state.server_key, entry.get("server_public_key")
            )
    elif kind == "round":
        if state.last_round is not None and entry["round"] <= state.last_round:
            raise VerificationError(
                f"round number of entry {idx}", f"> {state.last_round}", entry["round"]
            )
        if state.last_model is not None and entry["parent_sha256"] != state.last_model:
            raise VerificationError(
                f"parent model of round {entry['round']}", state.last_model, entry["parent_sha256"]
            )
        _check_model(state.run_dir, entry["model_sha256"], idx)
        state.last_round, state.last_model = entry["round"], entry["model_sha256"]
    elif kind == "end":
        if state.last_model is not None and entry["final_model_sha256"] != state.last_model:
            raise VerificationError("final model", state.last_model, entry["final_model_sha256"])
        _check_model(state.run_dir, entry["final_model_sha256"], idx)
        state.ended = True
    elif kind == "anchor":
        size = entry["size"]
        if not 0 < size <= idx:
            raise VerificationError(f"anchored size in entry {idx}", f"in [1, {idx}]", size)
        computed = state.tree.root(size).hex()
        if entry["root"] != computed:
            raise VerificationError(f"anchored root at size {size}", computed, entry["root"])
        if state.anchor is not None:
            from fedmeta.ledger.anchor import check_anchor

            check_anchor(
                state.anchor, entry["tx_hash"], size, bytes.fromhex(computed), entry["chain_id"]
            )
