"""Merkle hashing and proofs against published vectors and a recursive reference of RFC 9162.

Known answers: the 8-leaf reference tree of google/certificate-transparency,
cpp/merkletree/merkle_tree_test.cc (kInputs, kSHA256Roots, kSHA256Paths, kSHA256Proofs;
the same data is in transparency-dev/merkle testonly/constants.go). Its leaf numbers are
1-based; ours are 0-based indices.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedmeta.errors import BadInput, VerificationError
from fedmeta.ledger import merkle

CT_INPUTS = [
    b"",
    b"\x00",
    b"\x10",
    b"\x20\x21",
    b"\x30\x31",
    b"\x40\x41\x42\x43",
    b"\x50\x51\x52\x53\x54\x55\x56\x57",
    b"\x60\x61\x62\x63\x64\x65\x66\x67\x68\x69\x6a\x6b\x6c\x6d\x6e\x6f",
]
CT_EMPTY_ROOT = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
CT_ROOTS = [  # root after 1..8 leaves
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_PATHS = [  # (0-based index, tree size, audit path)
    (0, 1, []),
    (
        0,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        5,
        8,
        [
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (
        1,
        5,
        [
            "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]
CT_CONSISTENCY = [  # (old size, new size, proof)
    (1, 1, []),
    (
        1,
        8,
        [
            "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
        ],
    ),
    (
        6,
        8,
        [
            "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        ],
    ),
    (
        2,
        5,
        [
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        ],
    ),
]


# Reference: the recursive definitions of RFC 9162 §2.1.1, §2.1.3.1 and §2.1.4.1, written
# with hashlib only, over the raw entries.
def ref_mth(d: list[bytes]) -> bytes:
    n = len(d)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < n:
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    n = len(d)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    n = len(d)
    if m == n:
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def hexes(hashes: list[bytes]) -> list[str]:
    return [h.hex() for h in hashes]


def leaves_of(entries: list[bytes]) -> list[bytes]:
    return [merkle.leaf_hash(e) for e in entries]


def test_prefixes_are_the_rfc_constants():
    assert merkle.LEAF_PREFIX == b"\x00" and merkle.NODE_PREFIX == b"\x01"
    assert merkle.leaf_hash(b"x") == hashlib.sha256(b"\x00x").digest()


def test_ct_roots_for_every_size():
    assert merkle.root([]).hex() == CT_EMPTY_ROOT
    tree = merkle.MerkleTree()
    for size, entry in enumerate(CT_INPUTS, start=1):
        tree.append(merkle.leaf_hash(entry))
        assert tree.root().hex() == CT_ROOTS[size - 1]
        assert merkle.root(leaves_of(CT_INPUTS[:size])).hex() == CT_ROOTS[size - 1]
    # every earlier size is still answerable from the full tree
    assert [tree.root(s).hex() for s in range(1, 9)] == CT_ROOTS


@pytest.mark.parametrize("index,size,path", CT_PATHS)
def test_ct_inclusion_vectors(index, size, path):
    leaves = leaves_of(CT_INPUTS[:size])
    assert hexes(merkle.inclusion_proof(leaves, index)) == path
    merkle.verify_inclusion(
        leaves[index],
        index,
        size,
        [bytes.fromhex(p) for p in path],
        bytes.fromhex(CT_ROOTS[size - 1]),
    )


@pytest.mark.parametrize("old,new,proof", CT_CONSISTENCY)
def test_ct_consistency_vectors(old, new, proof):
    leaves = leaves_of(CT_INPUTS[:new])
    assert hexes(merkle.consistency_proof(leaves, old)) == proof
    merkle.verify_consistency(
        old,
        new,
        bytes.fromhex(CT_ROOTS[old - 1]),
        bytes.fromhex(CT_ROOTS[new - 1]),
        [bytes.fromhex(p) for p in proof],
    )


entries_st = st.lists(st.binary(max_size=8), min_size=1, max_size=70)


@settings(max_examples=60, deadline=None)
@given(entries_st)
def test_root_matches_recursive_reference(entries):
    tree = merkle.MerkleTree(leaves_of(entries))
    for size in range(len(entries) + 1):
        assert tree.root(size) == ref_mth(entries[:size])


@settings(max_examples=40, deadline=None)
@given(entries_st, st.data())
def test_proofs_match_reference(entries, data):
    tree = merkle.MerkleTree(leaves_of(entries))
    new = data.draw(st.integers(1, len(entries)))
    index = data.draw(st.integers(0, new - 1))
    old = data.draw(st.integers(1, new))
    assert tree.inclusion_proof(index, new) == ref_path(index, entries[:new])
    assert tree.consistency_proof(old, new) == ref_subproof(old, entries[:new], True)


def test_every_proof_verifies_up_to_33_leaves():
    entries = [bytes([i]) * (i % 5) for i in range(33)]
    tree = merkle.MerkleTree(leaves_of(entries))
    for n in range(1, 34):
        r = tree.root(n)
        for i in range(n):
            merkle.verify_inclusion(tree.leaf(i), i, n, tree.inclusion_proof(i, n), r)
        for m in range(1, n + 1):
            merkle.verify_consistency(m, n, tree.root(m), r, tree.consistency_proof(m, n))


def _inclusion_fails(leaf, index, size, proof, root_hash):
    with pytest.raises(VerificationError):
        merkle.verify_inclusion(leaf, index, size, proof, root_hash)


@pytest.mark.parametrize("index,size,path", CT_PATHS[1:])
def test_inclusion_rejects_mutations(index, size, path):
    leaves = leaves_of(CT_INPUTS[:size])
    proof = [bytes.fromhex(p) for p in path]
    good_root = bytes.fromhex(CT_ROOTS[size - 1])
    leaf = leaves[index]
    _inclusion_fails(leaf, index ^ 1, size, proof, good_root)
    _inclusion_fails(leaf, index, size * 2, proof, good_root)
    _inclusion_fails(leaf, index, size // 2 or 1, proof, good_root)
    _inclusion_fails(merkle.leaf_hash(b"WrongLeaf"), index, size, proof, good_root)
    _inclusion_fails(leaf, index, size, proof, bytes.fromhex(CT_EMPTY_ROOT))
    for j in range(len(proof)):
        wrong = list(proof)
        wrong[j] = bytes.fromhex(CT_EMPTY_ROOT)
        _inclusion_fails(leaf, index, size, wrong, good_root)
    _inclusion_fails(leaf, index, size, proof + [good_root], good_root)
    _inclusion_fails(leaf, index, size, proof[:-1], good_root)
    _inclusion_fails(leaf, index, size, [good_root] + proof, good_root)


@pytest.mark.parametrize("old,new,proof", CT_CONSISTENCY[1:])
def test_consistency_rejects_mutations(old, new, proof):
    p = [bytes.fromhex(x) for x in proof]
    r1, r2 = bytes.fromhex(CT_ROOTS[old - 1]), bytes.fromhex(CT_ROOTS[new - 1])
    bad = [
        (old - 1, new, r1, r2, p),
        (old + 1, new, r1, r2, p),
        (old, new * 2, r1, r2, p),
        (old, new // 2, r1, r2, p),
        (old, new, r1, b"WrongRoot", p),
        (old, new, b"WrongRoot", r2, p),
        (old, new, r2, r1, p),
        (old, new, r1, r2, []),
        (old, new, r1, r2, p + [p[-1]]),
        (old, new, r1, r2, p[:-1]),
        (old, new, r1, r2, [p[0]] + p),
    ]
    for j in range(len(p)):
        wrong = list(p)
        wrong[j] = bytes.fromhex(CT_EMPTY_ROOT)
        bad.append((old, new, r1, r2, wrong))
    for args in bad:
        with pytest.raises(VerificationError):
            merkle.verify_consistency(*args)


def test_error_names_expected_and_got():
    leaves = leaves_of(CT_INPUTS)
    with pytest.raises(VerificationError, match=f"expected {CT_ROOTS[7]}, got "):
        merkle.verify_inclusion(
            leaves[1], 0, 8, merkle.inclusion_proof(leaves, 0), bytes.fromhex(CT_ROOTS[7])
        )


def test_bad_proof_requests_are_bad_input():
    tree = merkle.MerkleTree(leaves_of(CT_INPUTS))
    with pytest.raises(BadInput):
        tree.inclusion_proof(8)
    with pytest.raises(BadInput):
        tree.consistency_proof(3, 9)


@pytest.mark.parametrize("new", [0, 1, 5])
@pytest.mark.parametrize("old_root", [merkle.EMPTY_ROOT, b"\0" * 32])
def test_consistency_from_the_empty_tree_is_refused(new, old_root):
    """A proof from size 0 proves nothing (transparency-dev refuses it too); before, any
    pair of roots at sizes (0, 0) passed."""
    tree = merkle.MerkleTree(leaves_of([bytes([i]) for i in range(new)]))
    with pytest.raises(VerificationError, match="consistency sizes"):
        merkle.verify_consistency(0, new, old_root, tree.root(), [])
