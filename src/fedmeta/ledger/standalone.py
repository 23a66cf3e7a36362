"""Check a `fedmeta ledger prove` document with hashlib and the server's public key alone.

Self-contained on purpose (no other fedmeta imports) so an auditor can read or copy this
one file: it repeats the RFC 9162 leaf/node hashing (§2.1.1) and the inclusion
verification algorithm (§2.1.3.2), and rebuilds the signed tree-head message
``b"fedmeta/tree-head/v1\\x00" || size || timestamp_ms || root`` (integers 8-byte
big-endian) instead of trusting a message supplied with the proof. Ed25519 (RFC 8032)
signatures are checked with pyca/cryptography.

    doc = json.loads(Path("proof.json").read_text())
    verify_proof_document(doc, public_key_hex="<the server key you expect>")  # None or raises
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
TREE_HEAD_DOMAIN = b"fedmeta/tree-head/v1\x00"


class ProofError(Exception):
    """The proof does not check out; the message says expected vs got."""

    def __init__(self, what: str, expected: Any, got: Any):
        super().__init__(f"{what}: expected {expected}, got {got}")


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _root_from_path(leaf: bytes, index: int, tree_size: int, path: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 1-5: the root the audit path leads to."""
    if not 0 <= index < tree_size:
        raise ProofError("leaf index", f"< tree size {tree_size}", index)
    fn, sn, r = index, tree_size - 1, leaf
    for p in path:
        if sn == 0:
            raise ProofError("audit path length", "fewer hashes", len(path))
        if fn & 1 or fn == sn:
            r = _node(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = _node(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("audit path length", "more hashes", len(path))
    return r


def verify_inclusion_standalone(
    entry_bytes: bytes,
    index: int,
    tree_size: int,
    proof_hex_list: Sequence[str],
    root_hex: str,
    timestamp_ms: int,
    signature_hex: str,
    public_key_hex: str,
) -> None:
    """Return None if the entry is leaf `index` of the tree head signed by the key, else raise."""
    leaf = hashlib.sha256(LEAF_PREFIX + entry_bytes).digest()
    try:
        root = bytes.fromhex(root_hex)
        path = [bytes.fromhex(h) for h in proof_hex_list]
    except (TypeError, ValueError):
        raise ProofError("root and proof", "hex strings", (root_hex, proof_hex_list)) from None
    got = _root_from_path(leaf, index, tree_size, path)
    if got != root:
        raise ProofError("Merkle root", root_hex, got.hex())
    message = TREE_HEAD_DOMAIN + struct.pack(">QQ", tree_size, timestamp_ms) + root
    try:
        key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(public_key_hex))
        key.verify(bytes.fromhex(signature_hex), message)
    except (InvalidSignature, ValueError):
        raise ProofError(
            "tree head signature", f"valid for key {public_key_hex}", signature_hex
        ) from None


def verify_proof_document(doc: dict[str, Any], public_key_hex: str | None = None) -> None:
    """Check the JSON printed by `fedmeta ledger prove`; pin the key to trust only it."""
    fields = ("entry", "index", "tree_size", "proof", "root", "timestamp_ms", "signature")
    missing = [k for k in (*fields, "public_key") if k not in doc]
    if missing:
        raise ProofError("proof document", "the fields printed by `fedmeta ledger prove`", missing)
    if public_key_hex is not None and doc["public_key"] != public_key_hex:
        raise ProofError("server public key", public_key_hex, doc["public_key"])
    entry, *rest = (doc[k] for k in fields)
    verify_inclusion_standalone(entry.encode("utf-8"), *rest, doc["public_key"])
