"""Full verification of a run ledger from its bytes, trusting nothing the database says.

Recomputes every leaf hash and the Merkle tree (RFC 9162 §2.1), checks every signed tree
head (signature, root at its size, consistency proof from the previous head, §2.1.4),
that the latest head covers every entry, every model file's SHA-256, the parent chain of
the rounds from the initial model, and, given a chain, every anchored root.

In a run folder it also checks the files the ledger covers: `config.toml` against the
start entry's config hash, the files the `end` entry lists (`model.pt`, ...), and the run
itself: a finished run's `summary.json` holds the signed tree head that covers its `end`
entry (a ledger cut back, or ended entries deleted, no longer reaches it), and the run id
in `summary.json` or `checkpoint.pt` must be the ledger's (another run's ledger swapped in
is caught). Returns the covered files (name -> SHA-256) or raises `VerificationError` at
the first failure with expected vs got.
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
from fedmeta.ledger.run import model_path


def verify_ledger(
    path: str | Path,
    public_key: str | None = None,
    anchor: Any = None,
    known_head: tuple[int, str] | None = None,
) -> dict[str, str]:
    """Verify `ledger.db` (or the run folder holding it); return the files it covers.

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
            return _verify(ledger, public_key, anchor, known_head)
        except sqlite3.DatabaseError as err:
            raise VerificationError(
                "ledger database", "a readable SQLite ledger", str(err)
            ) from None


def _check_known_head(known_head: tuple[int, str]) -> None:
    size, root_hex = known_head
    try:
        ok = isinstance(size, int) and size >= 1 and len(bytes.fromhex(root_hex)) == HASH_SIZE
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise BadInput(
            "known_head",
            known_head,
            "(tree size >= 1, 64 hex characters of its root); a size-0 head proves nothing",
        )


def _verify(
    ledger: Ledger, pinned: str | None, anchor: Any, known_head: tuple[int, str] | None
) -> dict[str, str]:
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
    state = _check_entries(entries, ledger.path.parent, server_key, tree, anchor)
    _check_run_folder(state, heads)
    return state.covered


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


def _check_file(state: _RunState, name: str, sha256_hex: str, what: str) -> None:
    path = state.run_dir / name
    got = _file_sha256(path) if path.is_file() else "no file"
    if got != sha256_hex:
        raise VerificationError(f"{name} of {what}", sha256_hex, got)
    state.covered[name] = sha256_hex


def _check_model(state: _RunState, sha256_hex: str, idx: int) -> None:
    name = model_path(Path(), sha256_hex).as_posix()
    _check_file(state, name, sha256_hex, f"entry {idx}")


class _RunState:
    def __init__(self, run_dir: Path, server_key: str, tree: MerkleTree, anchor: Any):
        self.run_dir, self.server_key, self.tree, self.anchor = run_dir, server_key, tree, anchor
        self.ended = False
        self.last_round: int | None = None
        self.last_model: str | None = None
        self.run_id: str | None = None
        self.end_size: int | None = None
        self.covered: dict[str, str] = {}


def _check_entries(
    entries: list[dict[str, Any]], run_dir: Path, server_key: str, tree: MerkleTree, anchor: Any
) -> _RunState:
    state = _RunState(run_dir, server_key, tree, anchor)
    for idx, entry in enumerate(entries):
        try:
            _check_entry(idx, entry, state)
        except (KeyError, TypeError, ValueError, AttributeError) as err:
            raise VerificationError(
                f"fields of entry {idx}", "the fields of its type", repr(err)
            ) from None
    return state


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
        state.run_id = entry["run_id"]
        extra = entry.get("extra") or {}
        if "config_file" in extra:  # a fedmeta run: its resolved config is covered
            _check_file(state, extra["config_file"], entry["config_hash"], "the start entry")
        if "initial_model_sha256" in extra:  # round 1's parent
            _check_model(state, extra["initial_model_sha256"], idx)
            state.last_model = extra["initial_model_sha256"]
    elif kind == "round":
        if state.last_round is not None and entry["round"] <= state.last_round:
            raise VerificationError(
                f"round number of entry {idx}", f"> {state.last_round}", entry["round"]
            )
        if state.last_model is not None and entry["parent_sha256"] != state.last_model:
            raise VerificationError(
                f"parent model of round {entry['round']}", state.last_model, entry["parent_sha256"]
            )
        _check_model(state, entry["model_sha256"], idx)
        state.last_round, state.last_model = entry["round"], entry["model_sha256"]
    elif kind == "end":
        if state.last_model is not None and entry["final_model_sha256"] != state.last_model:
            raise VerificationError("final model", state.last_model, entry["final_model_sha256"])
        _check_model(state, entry["final_model_sha256"], idx)
        for name, sha256_hex in entry.get("files", {}).items():
            _check_file(state, name, sha256_hex, "the end entry")
        state.ended, state.end_size = True, idx + 1
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


def _check_run_folder(state: _RunState, heads: list[TreeHead]) -> None:
    """The folder's own record of its run: the sealed final head, the run id."""
    summary_path = state.run_dir / "summary.json"
    if summary_path.is_file():
        try:
            seal = json.loads(summary_path.read_bytes()).get("ledger")
        except (ValueError, AttributeError):
            raise VerificationError("summary.json", "a JSON object", "unparseable") from None
        if seal is None:
            raise VerificationError("summary.json of a run with a ledger", "a `ledger` seal", None)
        _check_seal(state, seal, heads)
        state.covered["summary.json (sealed tree head)"] = seal.get("root", "")
        return
    checkpoint = state.run_dir / "checkpoint.pt"
    if checkpoint.is_file():
        import torch  # only for a run folder: reading a bare ledger needs no torch

        try:
            saved = torch.load(checkpoint, weights_only=True)
            run_id = saved["state"]["progress"]["run_id"]
            # every round before the committed step was published before it was committed
            published = saved["state"]["simulation"]["round"] - ("round" in saved["publish"])
        except Exception as err:  # noqa: BLE001 -- any unreadable checkpoint is a failure here
            raise VerificationError("checkpoint.pt", "a readable federated checkpoint", repr(err)) from None
        if run_id != state.run_id:
            raise VerificationError("run id of checkpoint.pt", state.run_id, run_id)
        if (state.last_round or 0) < published:
            raise VerificationError("rounds in the ledger (checkpoint.pt committed them)",
                                    f">= {published}", state.last_round or 0)


def _check_seal(state: _RunState, seal: dict[str, Any], heads: list[TreeHead]) -> None:
    try:
        size, root = int(seal["entries"]), bytes.fromhex(seal["root"])
        head = TreeHead(size, root, int(seal["timestamp_ms"]), bytes.fromhex(seal["signature"]),
                        keys.key_id(state.server_key))
    except (KeyError, TypeError, ValueError) as err:
        raise VerificationError("ledger seal in summary.json", "size, root, signature", repr(err)) from None
    if seal.get("run_id") != state.run_id:
        raise VerificationError("run id in summary.json", state.run_id, seal.get("run_id"))
    head.verify(state.server_key)
    if state.end_size != size:
        raise VerificationError(
            "entries up to the end entry (sealed in summary.json)", size, state.end_size
        )
    computed = state.tree.root(size)
    if computed != root:
        raise VerificationError(f"root at size {size} (sealed in summary.json)", root.hex(), computed.hex())
    if not any(h.size == size and h.root == root for h in heads):
        raise VerificationError("signed tree head sealed in summary.json", f"size {size}", "absent")
