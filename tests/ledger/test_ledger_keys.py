"""Ed25519 identities: RFC 8032 test vector, file modes, key ids."""

from __future__ import annotations

import hashlib
import stat

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmeta.errors import BadInput, VerificationError
from fedmeta.ledger import keys

# RFC 8032 §7.1, TEST 1 (empty message)
RFC8032_SECRET = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60"
RFC8032_PUBLIC = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
RFC8032_SIGNATURE = (
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065"
    "224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def test_rfc8032_vector():
    key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(RFC8032_SECRET))
    assert keys.public_key_hex(key) == RFC8032_PUBLIC
    assert keys.sign(key, b"").hex() == RFC8032_SIGNATURE
    keys.verify_signature(RFC8032_PUBLIC, b"", bytes.fromhex(RFC8032_SIGNATURE), "vector")
    with pytest.raises(VerificationError, match="expected a valid Ed25519 signature"):
        keys.verify_signature(RFC8032_PUBLIC, b"x", bytes.fromhex(RFC8032_SIGNATURE), "vector")


def test_key_id_is_sha256_of_raw_public_key():
    assert keys.key_id(RFC8032_PUBLIC) == hashlib.sha256(bytes.fromhex(RFC8032_PUBLIC)).hexdigest()


def test_identity_files(tmp_path):
    ident = keys.Identity.create(tmp_path / "ids", "hospital-a")
    assert stat.S_IMODE(ident.private_path.stat().st_mode) == 0o600
    loaded = keys.load_private_key(ident.private_path)
    assert keys.public_key_hex(loaded) == ident.public_key
    assert (tmp_path / "ids" / "hospital-a.pub").read_text().strip() == ident.public_key
    with pytest.raises(BadInput):  # never overwrites a key
        keys.Identity.create(tmp_path / "ids", "hospital-a")


@pytest.mark.parametrize("bad", ["", "zz" * 32, "ab" * 31, RFC8032_PUBLIC + "00"])
def test_bad_public_keys_are_bad_input(bad):
    with pytest.raises(BadInput, match="64 hex characters"):
        keys.load_public_key(bad)


def test_bad_names_and_files(tmp_path):
    with pytest.raises(BadInput):
        keys.Identity.create(tmp_path, "../escape")
    (tmp_path / "junk.pem").write_text("not a key")
    with pytest.raises(BadInput):
        keys.load_private_key(tmp_path / "junk.pem")


def test_load_or_create_is_stable(tmp_path):
    first = keys.load_or_create_private_key(tmp_path / "keys" / "server.pem")
    again = keys.load_or_create_private_key(tmp_path / "keys" / "server.pem")
    assert keys.public_key_hex(first) == keys.public_key_hex(again)
    assert stat.S_IMODE((tmp_path / "keys" / "server.pem").stat().st_mode) == 0o600


def test_a_key_appears_whole_or_not_at_all(tmp_path, monkeypatch):
    """A crash while the key is written leaves no key file (before: an empty one, which
    every later run refused); two processes creating one key agree on it."""
    import os

    path = tmp_path / "home" / "server_key.pem"
    path.parent.mkdir()
    real_fsync = os.fsync

    def crash(fd):
        raise KeyboardInterrupt  # stands for SIGKILL mid-write

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(KeyboardInterrupt):
        keys.load_or_create_private_key(path)
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert not path.exists() and list(path.parent.iterdir()) == []
    first = keys.load_or_create_private_key(path)
    other = keys.generate()
    with pytest.raises(BadInput):
        keys.save_private_key(other, path)  # never overwrites
    assert keys.public_key_hex(keys.load_or_create_private_key(path)) == keys.public_key_hex(first)
