"""CKKS sums over Flower messages (`privacy.secure_aggregation = "ckks"`, deployed): the
clients' shared key is dealt through the server, which can open neither the key nor an
update, and the server adds ciphertexts without a key (Cheon et al., ASIACRYPT 2017, via
`privacy/he.py`; the in-process twin is `federated/encrypted.py`).

Key dealing, once the clients have joined (again after a supernode rejoins):
  query            each node makes an X25519 key pair, keeps the private half in its Flower
                   context and answers the public half, signed with its Ed25519 key if it has one;
  query.ckks_deal  the dealer (the lowest client id) checks each public key against
                   `ledger.participants` when the config registers keys, generates the CKKS
                   keys, seals the secret context once under a fresh key K (ChaCha20-Poly1305)
                   and wraps K for each client (ephemeral X25519, HKDF-SHA256,
                   ChaCha20-Poly1305), signs the deal, and answers it with the keyless context;
  train            carries the sealed context and the client's wrap until the client has
                   installed that deal; with registered keys the client checks the dealer's
                   signature first.
Each round, three exchanges:
  train               the update stays on the node as its summand row; the reply carries the weight;
  train.ckks_encrypt  the scaled weight in, [w·row, w] as ciphertexts out, signed as an update;
  train.ckks_decrypt  the sum the server added, to one client of the round, which answers
                      the plaintext sum.

Trust: with `ledger.participants` in a config the clients pinned (`fedmeta deploy
supernode --config`), a server that swaps a node's public key or deals keys of its own is
refused. Decryption trusts the server as secure aggregation does (honest but curious): a
client cannot tell a sum from one client's ciphertext, so a server that sends it one
learns that update.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedmeta.config import Config
from fedmeta.deploy.secagg import in_order
from fedmeta.errors import BadInput, FedmetaError
from fedmeta.federated.encrypted import magnitude_limit
from fedmeta.ledger.keys import load_private_key, sign, verify_signature
from fedmeta.params import Params, weighted_rows
from fedmeta.privacy.he import CKKSKeys, load_context, load_vector

DEAL, ENCRYPT, DECRYPT = "query.ckks_deal", "train.ckks_encrypt", "train.ckks_decrypt"
CKKS, INSTALL = "ckks", "ckks.install"  # message records: a deal's or a round's public fields; a deal to install
KX, KEY, ROW, TODO = "fedmeta.ckks.kx", "fedmeta.ckks.key", "fedmeta.ckks.row", "fedmeta.ckks.round"  # node state
_KX_DOMAIN, _DEAL_DOMAIN, _WRAP_INFO = b"fedmeta/ckks/kx\x00", b"fedmeta/ckks/deal\x00", b"fedmeta/ckks/wrap\x00"


# -- framing: a list of ciphertext blocks as one byte string (what a signature covers) --------
def pack(blocks: list[bytes]) -> bytes:
    return struct.pack("<I", len(blocks)) + b"".join(struct.pack("<Q", len(b)) + b for b in blocks)


def unpack(data: bytes) -> list[bytes]:
    """The blocks of `pack`; BadInput on anything else."""
    try:
        (count,), at, blocks = struct.unpack_from("<I", data), 4, []
        for _ in range(count):
            (n,) = struct.unpack_from("<Q", data, at)
            if at + 8 + n > len(data):
                raise struct.error
            blocks.append(data[at + 8 : at + 8 + n])
            at += 8 + n
    except struct.error:
        raise BadInput("ciphertexts", f"{len(data)} bytes", "packed CKKS ciphertext blocks") from None
    if at != len(data):
        raise BadInput("ciphertexts", f"{len(data) - at} trailing bytes", "packed CKKS ciphertext blocks")
    return blocks


# -- the node's key-exchange key --------------------------------------------------------------
def kx_message(cid: int, public: bytes) -> bytes:
    return _KX_DOMAIN + str(cid).encode() + b"\x00" + public


def advertise(state: RecordDict, cid: int, key_path: Path | None) -> dict[str, bytes]:
    """The node's X25519 public key (made once per Flower run, kept in its context) and its
    signature by the client's Ed25519 key (empty without one): fields of the query reply."""
    if KX not in state:
        state[KX] = ConfigRecord({"private": X25519PrivateKey.generate().private_bytes_raw()})
    public = X25519PrivateKey.from_private_bytes(bytes(state[KX]["private"])).public_key().public_bytes_raw()
    signature = sign(load_private_key(key_path), kx_message(cid, public)) if key_path else b""
    return {"kx": public, "kx_signature": signature}


def adverts_record(adverts: dict[int, tuple[bytes, bytes]]) -> ConfigRecord:
    """The clients' public keys and signatures, as the server forwards them to the dealer."""
    return ConfigRecord({f"{k}.{c}": v for c, kx in adverts.items() for k, v in zip(("kx", "sig"), kx, strict=True)})


def read_adverts(record: ConfigRecord) -> dict[int, tuple[bytes, bytes]]:
    return {int(k[3:]): (bytes(v), bytes(record.get(f"sig.{k[3:]}", b""))) for k, v in record.items()
            if k.startswith("kx.")}


def _wrap_key(private: X25519PrivateKey, public: bytes, key_id: bytes, cid: int) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), 32, salt=key_id, info=_WRAP_INFO + str(cid).encode()).derive(shared)


# -- the dealer -------------------------------------------------------------------------------
def deal_message(key_id: bytes, dealer: int, dealer_kx: bytes, sealed: bytes, server_context: bytes,
                 wraps: dict[int, bytes]) -> bytes:
    """What the dealer signs: everything a client installs, hashed."""
    parts = [key_id, str(dealer).encode(), dealer_kx, hashlib.sha256(sealed).digest(),
             hashlib.sha256(server_context).digest(), *(str(c).encode() + w for c, w in sorted(wraps.items()))]
    return _DEAL_DOMAIN + b"".join(hashlib.sha256(p).digest() for p in parts)


def deal(cfg: Config, dealer: int, adverts: dict[int, tuple[bytes, bytes]], key_path: Path | None) -> RecordDict:
    """Generate the run's CKKS keys and wrap them for every client whose public key checks
    out (with `ledger.participants`: signed by its registered key); the others are named
    in `refused`. The reply holds no secret in the clear."""
    registered, wraps, refused = cfg.ledger.participants, {}, {}
    key_id, ephemeral, k = secrets.token_bytes(16), X25519PrivateKey.generate(), ChaCha20Poly1305.generate_key()
    for cid, (public, signature) in sorted(adverts.items()):
        if registered:
            if str(cid) not in registered:
                refused[cid] = f"client {cid} has no key in ledger.participants"
                continue
            try:
                verify_signature(registered[str(cid)], kx_message(cid, public), signature, f"client {cid}'s CKKS key")
            except FedmetaError as err:
                refused[cid] = str(err)
                continue
        nonce = secrets.token_bytes(12)
        try:
            wrap_key = _wrap_key(ephemeral, public, key_id, cid)
        except ValueError:
            refused[cid] = f"client {cid} advertised a key that is not an X25519 key"
            continue
        wraps[cid] = nonce + ChaCha20Poly1305(wrap_key).encrypt(nonce, k, key_id + str(cid).encode())
    keys = CKKSKeys.generate()
    nonce = secrets.token_bytes(12)
    sealed = nonce + ChaCha20Poly1305(k).encrypt(nonce, keys.secret_context_bytes(), key_id)
    server_context, dealer_kx = keys.server_context_bytes(), ephemeral.public_key().public_bytes_raw()
    signature = b""
    if key_path is not None:
        signature = sign(load_private_key(key_path), deal_message(key_id, dealer, dealer_kx, sealed, server_context, wraps))
    body = {"key_id": key_id, "dealer": dealer, "dealer_kx": dealer_kx, "sealed": sealed,
            "server_context": server_context, "signature": signature,
            **{f"wrap.{c}": w for c, w in wraps.items()}, **{f"refused.{c}": why for c, why in refused.items()}}
    return RecordDict({CKKS: ConfigRecord(body)})


@dataclass
class Deal:
    """The server's copy of a deal: public, and useless without a client's private key."""

    key_id: bytes
    dealer: int
    dealer_kx: bytes
    sealed: bytes
    server_context: bytes
    signature: bytes
    wraps: dict[int, bytes]
    refused: dict[int, str]

    @classmethod
    def read(cls, content: RecordDict) -> Deal:
        body = content[CKKS]
        context = load_context(bytes(body["server_context"]))
        if context.is_private():  # a dealer that sends the secret key to the server is refused
            raise FedmetaError("the dealer sent a CKKS context with its secret key: refusing to hold it")
        return cls(bytes(body["key_id"]), int(body["dealer"]), bytes(body["dealer_kx"]), bytes(body["sealed"]),
                   bytes(body["server_context"]), bytes(body["signature"]),
                   {int(k[5:]): bytes(v) for k, v in body.items() if k.startswith("wrap.")},
                   {int(k[8:]): str(v) for k, v in body.items() if k.startswith("refused.")})

    def install_record(self, cid: int) -> ConfigRecord:
        """What client `cid` needs to install this deal (rides on its next train message)."""
        return ConfigRecord({"key_id": self.key_id, "dealer": self.dealer, "dealer_kx": self.dealer_kx,
                             "sealed": self.sealed, "server_context": self.server_context,
                             "signature": self.signature, "wrap": self.wraps[cid],
                             **{f"wrap.{c}": w for c, w in self.wraps.items()}})


# -- a client: install, keep, encrypt, decrypt -------------------------------------------------
def install(state: RecordDict, cfg: Config, cid: int, record: ConfigRecord) -> None:
    """Open this client's wrap with its X25519 key and the sealed secret context with K;
    with `ledger.participants`, only a deal the dealer signed with its registered key."""
    key_id, dealer, dealer_kx = bytes(record["key_id"]), int(record["dealer"]), bytes(record["dealer_kx"])
    sealed, server_context = bytes(record["sealed"]), bytes(record["server_context"])
    wraps = {int(k[5:]): bytes(v) for k, v in record.items() if k.startswith("wrap.")}
    if cfg.ledger.participants:
        public = cfg.ledger.participants.get(str(dealer))
        if public is None:
            raise FedmetaError(f"CKKS keys dealt by client {dealer}, which has no key in ledger.participants")
        verify_signature(public, deal_message(key_id, dealer, dealer_kx, sealed, server_context, wraps),
                         bytes(record["signature"]), f"the CKKS deal of client {dealer}")
    if KX not in state:
        raise FedmetaError("CKKS keys were dealt for a key this node no longer holds (restarted?)")
    private = X25519PrivateKey.from_private_bytes(bytes(state[KX]["private"]))
    wrap = bytes(record["wrap"])
    try:
        k = ChaCha20Poly1305(_wrap_key(private, dealer_kx, key_id, cid)).decrypt(wrap[:12], wrap[12:],
                                                                                 key_id + str(cid).encode())
        secret = ChaCha20Poly1305(k).decrypt(sealed[:12], sealed[12:], key_id)
    except (InvalidTag, ValueError):
        raise FedmetaError(f"the CKKS keys dealt to client {cid} do not open with its key") from None
    CKKSKeys.from_secret_context(secret)  # a context with a secret key, or BadInput
    state[KEY] = ConfigRecord({"key_id": key_id, "secret": secret})


def _keys(state: RecordDict, key_id: bytes) -> CKKSKeys:
    if KEY not in state or bytes(state[KEY]["key_id"]) != key_id:
        raise FedmetaError(f"this node holds no CKKS key {key_id.hex()} (restarted mid-run?)")
    return CKKSKeys.from_secret_context(bytes(state[KEY]["secret"]))


def keep(state: RecordDict, tag: str, row: Params, keep_: dict[str, Any]) -> None:
    """The round's summand stays on the node until the server asks for its ciphertexts."""
    state[ROW] = ArrayRecord(torch_state_dict=row)
    state[TODO] = ConfigRecord({"tag": tag, **keep_})


def encrypt(state: RecordDict, header: dict[str, Any]) -> bytes:
    """[w·row, w] under the run's key, packed; refused if the summed range could wrap."""
    if TODO not in state or str(state[TODO]["tag"]) != str(header["tag"]):
        raise FedmetaError(f"{ENCRYPT} for round {header['tag']}, but this node kept no update for it")
    keys = _keys(state, bytes(header["key_id"]))
    row = weighted_rows([in_order(state[ROW].to_torch_state_dict())], [float(header["weight"])])[0]  # (dim + 1,)
    share = magnitude_limit(keys.server_context_bytes()) / int(header["clients"])
    if (reach := float(np.abs(row).max())) >= share:
        raise BadInput("weights", f"max|w·Δ, w| = {reach:.3g}",
                       f"< {share:.3g} (CKKS range over {header['clients']} clients; scale the weights down)")
    del state[ROW]
    return pack(keys.encrypt(row))


def decrypt(state: RecordDict, header: dict[str, Any]) -> bytes:
    """The plaintext of the sum the server added, float64 little-endian."""
    keys = _keys(state, bytes(header["key_id"]))
    total = keys.decrypt_sum(unpack(bytes(header["data"])))
    return np.asarray(total, dtype="<f8").tobytes()


# -- the server: a keyless sum ----------------------------------------------------------------
def add(server_context: bytes, inputs: dict[int, bytes], dim: int) -> tuple[bytes, dict[int, str]]:
    """Σ of the clients' ciphertexts of `dim` values, packed, and the inputs refused
    (malformed, or of another length or ring) with the reason."""
    context = load_context(server_context)
    slots = context.seal_context().data.key_context_data().parms().poly_modulus_degree() // 2
    blocks = -(-dim // slots)
    total, bad = None, {}
    for cid, data in sorted(inputs.items()):
        try:
            vectors = [load_vector(context, b) for b in unpack(data)]
            sizes = [v.size() for v in vectors]
            if len(vectors) != blocks or sum(sizes) != dim:
                raise BadInput("ciphertexts", f"{len(vectors)} blocks of {sum(sizes)} values",
                               f"{blocks} blocks of {dim} values")
            total = vectors if total is None else [a + b for a, b in zip(total, vectors, strict=True)]
        except Exception as err:  # noqa: BLE001 -- TenSEAL raises bare exceptions on inputs it cannot use
            bad[cid] = f"malformed ciphertexts: {err}"
    return (b"" if total is None else pack([v.serialize() for v in total])), bad


def plaintext(data: bytes, dim: int) -> np.ndarray:
    """The decrypting client's answer: `dim` finite float64s, or FedmetaError."""
    if len(data) != 8 * dim:
        raise FedmetaError(f"the decrypted sum has {len(data)} bytes, expected {8 * dim}")
    total = np.frombuffer(data, dtype="<f8").astype(np.float64)
    if not np.all(np.isfinite(total)):
        raise FedmetaError("the decrypted sum holds non-finite values")
    return total


__all__ = ["CKKS", "DEAL", "DECRYPT", "ENCRYPT", "INSTALL", "Deal", "add", "adverts_record", "advertise", "deal",
           "decrypt", "encrypt", "install", "keep", "pack", "plaintext", "read_adverts", "unpack"]
