"""Ed25519 identities (RFC 8032) through pyca/cryptography: keys, key ids, sign and verify.

A private key lives in a PKCS#8 PEM file readable by its owner only (mode 0600); a public
key travels as the hex of its raw 32 bytes; its key id is the hex SHA-256 of those bytes.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from fedmeta.errors import BadInput, VerificationError

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


def generate() -> Ed25519PrivateKey:
    """A fresh key from the operating system's randomness."""
    return Ed25519PrivateKey.generate()


def public_key_hex(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Hex of the raw 32-byte public key."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return raw.hex()


def load_public_key(public_hex: str, field: str = "public_key") -> Ed25519PublicKey:
    """Parse a public key given as 64 hex characters."""
    try:
        raw = bytes.fromhex(public_hex)
    except (TypeError, ValueError):
        raw = b""
    if len(raw) != PUBLIC_KEY_SIZE:
        raise BadInput(field, public_hex, f"{2 * PUBLIC_KEY_SIZE} hex characters (raw Ed25519 key)")
    return Ed25519PublicKey.from_public_bytes(raw)


def key_id(public_hex: str) -> str:
    """Hex SHA-256 of the raw public key."""
    return hashlib.sha256(load_public_key(public_hex).public_bytes_raw()).hexdigest()


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> Path:
    """Write the key as unencrypted PKCS#8 PEM, readable by the owner only; never overwrites.

    The file appears whole or not at all (written and synced under a temporary name, then
    hard-linked into place, which fails if the path exists), so a crash never leaves a
    truncated key and two processes creating one key cannot both win."""
    path = Path(path)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    if path.exists():
        raise BadInput("key file", str(path), "a path that does not exist yet")
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # in case the umask or file system widened it
            f.write(pem)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    except FileExistsError:
        raise BadInput("key file", str(path), "a path that does not exist yet") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """Read a PEM Ed25519 private key written by `save_private_key`."""
    path = Path(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise BadInput("key file", str(path), f"a readable unencrypted PEM key ({err})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BadInput("key file", str(path), "an Ed25519 private key")
    return key


def load_or_create_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The key at `path`, generated and saved (mode 0600) on first use; for resumable runs."""
    path = Path(path)
    if path.exists():
        return load_private_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    key = generate()
    try:
        save_private_key(key, path)
    except BadInput:  # another process created it first: theirs is the key
        return load_private_key(path)
    return key


def sign(key: Ed25519PrivateKey, message: bytes) -> bytes:
    return key.sign(message)


def verify_signature(public_hex: str, message: bytes, signature: bytes, what: str) -> None:
    """Return None if `signature` is `public_hex`'s signature of `message`, else raise."""
    try:
        load_public_key(public_hex).verify(signature, message)
    except (InvalidSignature, BadInput):
        raise VerificationError(
            what, f"a valid Ed25519 signature by key {public_hex}", signature.hex() or "none"
        ) from None


@dataclass(frozen=True)
class Identity:
    """A named key pair on disk: `<dir>/<name>.pem` (private) and `<dir>/<name>.pub` (hex)."""

    name: str
    private_path: Path
    public_key: str

    @classmethod
    def create(cls, out_dir: str | Path, name: str) -> Identity:
        if not name or any(c in name for c in "/\\\0") or name.startswith("."):
            raise BadInput("name", name, "a non-empty file name without path separators")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        key = generate()
        private_path = save_private_key(key, out / f"{name}.pem")
        public = public_key_hex(key)
        (out / f"{name}.pub").write_text(public + "\n")
        return cls(name, private_path, public)
