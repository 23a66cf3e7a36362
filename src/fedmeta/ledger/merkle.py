"""Merkle tree hashing, inclusion and consistency proofs of RFC 9162 §2.1 (Certificate
Transparency v2; same tree hashing as RFC 6962 §2.1).

Leaf hash ``SHA-256(0x00 || entry)``, interior node ``SHA-256(0x01 || left || right)``;
the tree over ``n`` leaves splits at the largest power of two below ``n`` (MTH, §2.1.1).
Proofs are generated from the RFC's recursive definitions (§2.1.3.1, §2.1.4.1) and verified
with the RFC's iterative algorithms (§2.1.3.2, §2.1.4.2).

`MerkleTree` stores every complete (power-of-two) subtree hash once, level by level, so
appending is amortised O(1) and the root, an audit path or a consistency proof for *any*
earlier tree size costs O(log² n) hashes: a ledger of 100k entries is hashed once.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from fedmeta.errors import BadInput, VerificationError

LEAF_PREFIX = b"\x00"  # RFC 9162 §2.1.1: prefix of a leaf hash input
NODE_PREFIX = b"\x01"  # RFC 9162 §2.1.1: prefix of an interior node hash input
HASH_SIZE = 32  # SHA-256
EMPTY_ROOT = hashlib.sha256(b"").digest()  # MTH({}) = SHA-256()


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d0}) = SHA-256(0x00 || d0)."""
    return hashlib.sha256(LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right)."""
    return hashlib.sha256(NODE_PREFIX + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly smaller than n (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


class MerkleTree:
    """An append-only tree over leaf hashes; roots and proofs for every size up to `size`."""

    def __init__(self, leaf_hashes: Sequence[bytes] = ()):
        # _levels[k][j] = hash of the complete subtree over leaves [j * 2^k, (j + 1) * 2^k)
        self._levels: list[list[bytes]] = [[]]
        self.extend(leaf_hashes)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        """Add one leaf hash; completes every subtree it closes."""
        self._levels[0].append(leaf)
        k = 0
        while len(self._levels[k]) % 2 == 0:
            if k + 1 == len(self._levels):
                self._levels.append([])
            level = self._levels[k]
            self._levels[k + 1].append(node_hash(level[-2], level[-1]))
            k += 1

    def extend(self, leaf_hashes: Sequence[bytes]) -> None:
        for leaf in leaf_hashes:
            self.append(leaf)

    def leaf(self, index: int) -> bytes:
        return self._levels[0][index]

    def _check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise BadInput("tree_size", size, f"an integer in [0, {self.size}]")
        return size

    def _subtree(self, start: int, n: int) -> bytes:
        """MTH(D[start:start + n]) for a range the RFC's recursion visits (n >= 1)."""
        if n & (n - 1) == 0 and start % n == 0:
            return self._levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self._subtree(start, k), self._subtree(start + k, n - k))

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]) (RFC 9162 §2.1.1); the whole tree by default."""
        size = self._check_size(size)
        return self._subtree(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 §2.1.3.1, ordered from the leaf up."""
        size = self._check_size(size)
        if not 0 <= index < size:
            raise BadInput("index", index, f"an integer in [0, {size})")
        outer_first: list[bytes] = []  # siblings from the root down
        start, n, m = 0, size, index
        while n > 1:
            k = _split(n)
            if m < k:
                outer_first.append(self._subtree(start + k, n - k))
                n = k
            else:
                outer_first.append(self._subtree(start, k))
                start, m, n = start + k, m - k, n - k
        return outer_first[::-1]

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 §2.1.4.1 (empty if old_size is 0)."""
        new_size = self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise BadInput("old_size", old_size, f"an integer in [0, {new_size}]")
        if old_size == 0:
            return []
        outer_first: list[bytes] = []  # SUBPROOF appends these after its recursive part
        start, m, n, whole = 0, old_size, new_size, True
        while m != n:
            k = _split(n)
            if m <= k:
                outer_first.append(self._subtree(start + k, n - k))
                n = k
            else:
                outer_first.append(self._subtree(start, k))
                start, m, n, whole = start + k, m - k, n - k, False
        if not whole:
            outer_first.append(self._subtree(start, m))
        return outer_first[::-1]


def root(leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH over the given leaf hashes."""
    return MerkleTree(leaf_hashes).root()


def inclusion_proof(leaf_hashes: Sequence[bytes], index: int) -> list[bytes]:
    """Audit path for leaf `index` in the tree over `leaf_hashes`."""
    return MerkleTree(leaf_hashes).inclusion_proof(index)


def consistency_proof(leaf_hashes: Sequence[bytes], old_size: int) -> list[bytes]:
    """Proof that the tree over `leaf_hashes[:old_size]` is a prefix of the whole tree."""
    return MerkleTree(leaf_hashes).consistency_proof(old_size)


def _shift_until(fn: int, sn: int, stop_on_set_bit: bool) -> tuple[int, int]:
    """Right-shift fn and sn together until LSB(fn) is set (or fn is 0), or until it is clear."""
    while fn and bool(fn & 1) != stop_on_set_bit:
        fn, sn = fn >> 1, sn >> 1
    return fn, sn


def verify_inclusion(
    leaf: bytes, index: int, tree_size: int, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """RFC 9162 §2.1.3.2: return None if `proof` puts `leaf` at `index` under `root_hash`."""
    if not 0 <= index < tree_size:
        raise VerificationError("inclusion proof index", f"< tree size {tree_size}", index)
    fn, sn, r = index, tree_size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("inclusion proof length", "fewer hashes", len(proof))
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_until(fn, sn, stop_on_set_bit=True)
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("inclusion proof length", "more hashes", len(proof))
    if r != root_hash:
        raise VerificationError("inclusion proof root", root_hash.hex(), r.hex())


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 §2.1.4.2: return None if the tree at `old_size` is a prefix of `new_size`."""
    if not 1 <= old_size <= new_size:  # as transparency-dev's verifier: from size 0 proves nothing
        raise VerificationError("consistency sizes", f"1 <= old <= new {new_size}", old_size)
    if old_size == new_size:
        if proof:
            raise VerificationError("consistency proof length", 0, len(proof))
        if old_root != new_root:
            raise VerificationError("root of an unchanged tree", old_root.hex(), new_root.hex())
        return
    if not proof:
        raise VerificationError("consistency proof length", ">= 1", 0)
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is a complete subtree of the new one
        path.insert(0, old_root)
    fn, sn = _shift_until(old_size - 1, new_size - 1, stop_on_set_bit=False)
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise VerificationError("consistency proof length", "fewer hashes", len(proof))
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            fn, sn = _shift_until(fn, sn, stop_on_set_bit=True)
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError("consistency proof length", "more hashes", len(proof))
    if fr != old_root:
        raise VerificationError("consistency proof old root", old_root.hex(), fr.hex())
    if sr != new_root:
        raise VerificationError("consistency proof new root", new_root.hex(), sr.hex())
