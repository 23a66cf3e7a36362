"""SecAgg and SecAgg+ as sans-IO state machines: bytes in, bytes out, no transport.

Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine Learning",
CCS 2017, Fig. 4 (honest-but-curious variant, rounds 0-3 without the consistency check):
  0 AdvertiseKeys   each client publishes X25519 keys c_u (share encryption), s_u (masks);
  1 ShareKeys       each client Shamir-shares a fresh self-mask seed b_u and s_u^SK among
                    its neighbours, encrypted per neighbour (X25519 + HKDF-SHA256 +
                    ChaCha20-Poly1305);
  2 MaskedInput     y_u = x_u + PRG(b_u) + sum_{v<->u, v in U2} +/-PRG(s_uv), over Z_{2^k};
  3 Unmask          survivors reveal shares of b_u for clients whose y_u arrived and of
                    s_u^SK for clients that dropped after sharing keys; the server removes
                    the self masks and the dangling pairwise masks.
With `neighbourhood="secagg+"` the pairwise masks and shares follow the sparse graph of
Bell et al., CCS 2020 (see graph.py); the threshold then applies per neighbourhood (the
client and its neighbours). Below threshold every party aborts before reconstructing.
"""

from __future__ import annotations

import functools
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedmeta.errors import ConfigError, FedmetaError
from fedmeta.privacy.secagg import prg
from fedmeta.privacy.secagg.encoding import FixedPointCodec
from fedmeta.privacy.secagg.graph import (
    COMPLETE,
    SECAGG_PLUS,
    degree_for,
    min_threshold,
    neighbours,
)
from fedmeta.privacy.secagg.messages import (
    AdvertiseKeys,
    KeyBroadcast,
    MaskedInput,
    ShareDelivery,
    ShareKeys,
    UnmaskRequest,
    UnmaskShares,
)
from fedmeta.privacy.secagg.shamir import RandBytes, Share, _split, reconstruct

_SHARE_INFO = b"fedmeta/secagg/share-encryption"
_MASK_INFO = b"fedmeta/secagg/pairwise-mask"
_NONCE_BYTES = 12
_KEY_BYTES = 32


class Phase(IntEnum):
    ADVERTISE = 0
    SHARE_KEYS = 1
    MASKED_INPUT = 2
    UNMASK = 3


class SecAggAbort(FedmetaError):
    """Too few parties remain for the threshold: the round ends and nothing is reconstructed."""

    def __init__(self, phase: Phase, client: int, alive: int, threshold: int):
        self.phase, self.client, self.alive, self.threshold = phase, client, alive, threshold
        super().__init__(
            f"secure aggregation aborted in {phase.name}: client {client}'s neighbourhood has"
            f" {alive} live share holders, threshold is {threshold}"
        )


class ProtocolViolation(FedmetaError):
    """A message an honest party must refuse (wrong order, forged sender, unsafe request)."""


@dataclass(frozen=True)
class SecAggConfig:
    """Public parameters of one aggregation, identical at every party."""

    clients: tuple[int, ...]  # ids, distinct, 0 <= id < 2^32
    threshold: int  # shares needed per neighbourhood (the client and its neighbours)
    dim: int  # length of each update vector
    clip: float  # inputs are clipped to [-clip, clip] before encoding
    bits: int = 32  # ring Z_{2^bits}
    neighbourhood: str = COMPLETE  # "complete" (SecAgg) or "secagg+" (Bell et al.)
    degree: int | None = None  # SecAgg+ neighbours per client; None: graph.degree_for(n)
    session: bytes = b""  # fresh public value per aggregation: graph seed and HKDF salt

    def __post_init__(self) -> None:
        ids = self.clients
        if len(set(ids)) != len(ids) or not ids or not all(0 <= i < 2**32 for i in ids):
            raise ConfigError("clients", ids, "a non-empty tuple of distinct ids in [0, 2^32)")
        if self.neighbourhood not in (COMPLETE, SECAGG_PLUS):
            raise ConfigError(
                "neighbourhood", self.neighbourhood, f"{COMPLETE!r} or {SECAGG_PLUS!r}"
            )
        if not (isinstance(self.dim, int) and self.dim >= 1):
            raise ConfigError("dim", self.dim, "an integer >= 1")
        n = len(ids)
        if self.neighbourhood == COMPLETE and self.degree not in (None, n - 1):
            raise ConfigError("degree", self.degree, f"None or {n - 1} for the complete graph")
        if self.degree is None:
            full = self.neighbourhood == COMPLETE
            object.__setattr__(self, "degree", n - 1 if full else degree_for(n))
        # t > holders/2: a server lying about who dropped cannot collect both b_u and s_u^SK
        lowest, holders = min_threshold(self.degree), self.degree + 1
        if not (isinstance(self.threshold, int) and lowest <= self.threshold <= holders):
            raise ConfigError("threshold", self.threshold, f"an integer in [{lowest}, {holders}]")
        _ = (self.codec, self.graph)  # built now so that bad parameters raise here

    @cached_property
    def codec(self) -> FixedPointCodec:
        return FixedPointCodec(self.clip, len(self.clients), self.bits)

    @cached_property
    def graph(self) -> dict[int, frozenset[int]]:
        return neighbours(self.clients, self.neighbourhood, self.degree, self.session)


@dataclass
class PartyStats:
    """Wall time and serialized bytes per phase for one party."""

    seconds: dict[Phase, float] = field(default_factory=dict)
    bytes_sent: dict[Phase, int] = field(default_factory=dict)
    bytes_received: dict[Phase, int] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())

    @property
    def total_bytes_sent(self) -> int:
        return sum(self.bytes_sent.values())


def _size(payload: Any) -> int:
    if isinstance(payload, bytes):
        return len(payload)
    if isinstance(payload, Mapping):
        return sum(len(v) for v in payload.values())
    return 0


F = TypeVar("F", bound=Callable[..., Any])


def _step(phase: Phase) -> Callable[[F], F]:
    """Run a phase only in order, and record its time and message sizes in `self.stats`."""

    def wrap(method: F) -> F:
        @functools.wraps(method)
        def run(self: Any, *args: Any) -> Any:
            if self._next is not phase:
                raise ProtocolViolation(f"{phase.name} received while expecting {self._next!r}")
            self._next = None  # a failed step leaves the party unusable
            start = time.perf_counter()
            out = method(self, *args)
            self.stats.seconds[phase] = time.perf_counter() - start
            self.stats.bytes_received[phase] = _size(args[0]) if args else 0
            self.stats.bytes_sent[phase] = _size(out)
            self._next = Phase(phase + 1) if phase < Phase.UNMASK else None
            return out

        return run  # type: ignore[return-value]

    return wrap


def _kdf(private: X25519PrivateKey, public: bytes, salt: bytes, info: bytes) -> bytes:
    shared = private.exchange(X25519PublicKey.from_public_bytes(public))
    return HKDF(hashes.SHA256(), _KEY_BYTES, salt=salt, info=info).derive(shared)


def _mask_sign(owner: int, peer: int) -> int:
    """+1 if `owner` adds PRG(s_uv) for pair (owner, peer), -1 if it subtracts it."""
    return 1 if owner < peer else -1


def _apply(acc: np.ndarray, seed: bytes, sign: int) -> None:
    mask = prg.expand(seed, acc.size, acc.dtype)  # (dim,)
    if sign > 0:
        acc += mask
    else:
        acc -= mask


def _check_threshold(phase: Phase, client: int, alive: int, threshold: int) -> None:
    if alive < threshold:
        raise SecAggAbort(phase, client, alive, threshold)


class SecAggClient:
    """One client's side of the protocol; call the four steps in order, each once."""

    def __init__(
        self, config: SecAggConfig, client_id: int, *, _randbytes: RandBytes | None = None
    ):
        if client_id not in config.graph:
            raise ConfigError("client_id", client_id, f"one of config.clients {config.clients}")
        self.config, self.id = config, client_id
        self.stats = PartyStats()
        self._randbytes = _randbytes or secrets.token_bytes
        self._next: Phase | None = Phase.ADVERTISE
        self._peer_keys: dict[int, tuple[bytes, bytes]] = {}
        self._own_shares: tuple[bytes, bytes] = (b"", b"")
        self._inbox: dict[int, bytes] = {}

    def _new_key(self) -> X25519PrivateKey:
        return X25519PrivateKey.from_private_bytes(self._randbytes(_KEY_BYTES))

    def _aad(self, sender: int, recipient: int) -> bytes:
        return self.config.session + sender.to_bytes(4, "big") + recipient.to_bytes(4, "big")

    @_step(Phase.ADVERTISE)
    def advertise(self) -> bytes:
        self._c_key, self._s_key = self._new_key(), self._new_key()
        return AdvertiseKeys(
            self.id,
            self._c_key.public_key().public_bytes_raw(),
            self._s_key.public_key().public_bytes_raw(),
        ).to_bytes()

    @_step(Phase.SHARE_KEYS)
    def share_keys(self, broadcast: bytes) -> bytes:
        keys = KeyBroadcast.from_bytes(broadcast).keys
        if not keys.keys() <= self.config.graph[self.id]:
            raise ProtocolViolation(f"client {self.id} got keys of non-neighbours")
        own = {
            self._c_key.public_key().public_bytes_raw(),
            self._s_key.public_key().public_bytes_raw(),
        }
        flat = [k for pair in keys.values() for k in pair]
        if len(set(flat) | own) != len(flat) + 2:
            raise ProtocolViolation(f"client {self.id} got repeated public keys")
        holders = sorted(keys.keys() | {self.id})
        _check_threshold(Phase.SHARE_KEYS, self.id, len(holders), self.config.threshold)
        self._peer_keys = keys
        self._b = self._randbytes(prg.SEED_BYTES)
        t = self.config.threshold
        b_shares = _split(self._b, len(holders), t, self._randbytes)
        sk_shares = _split(self._s_key.private_bytes_raw(), len(holders), t, self._randbytes)
        out = {}
        for v, b_share, sk_share in zip(holders, b_shares, sk_shares, strict=True):
            pair = (b_share.to_bytes(), sk_share.to_bytes())
            if v == self.id:
                self._own_shares = pair
                continue
            key = _kdf(self._c_key, keys[v][0], self.config.session, _SHARE_INFO)
            nonce = self._randbytes(_NONCE_BYTES)
            plaintext = len(pair[0]).to_bytes(4, "big") + pair[0] + pair[1]
            out[v] = nonce + ChaCha20Poly1305(key).encrypt(nonce, plaintext, self._aad(self.id, v))
        return ShareKeys(self.id, out).to_bytes()

    @_step(Phase.MASKED_INPUT)
    def masked_input(self, delivery: bytes, update: np.ndarray) -> bytes:
        inbox = ShareDelivery.from_bytes(delivery).ciphertexts
        if not inbox.keys() <= self._peer_keys.keys():
            raise ProtocolViolation(f"client {self.id} got shares from clients without keys")
        _check_threshold(Phase.MASKED_INPUT, self.id, len(inbox) + 1, self.config.threshold)
        update = np.asarray(update)
        if update.shape != (self.config.dim,):
            raise ConfigError("update.shape", update.shape, f"({self.config.dim},)")
        self._inbox = inbox
        y = self.config.codec.encode(update)  # (dim,) uint
        _apply(y, self._b, +1)
        for v in inbox:  # neighbours that shared keys: U2 in the paper
            seed = _kdf(self._s_key, self._peer_keys[v][1], self.config.session, _MASK_INFO)
            _apply(y, seed, _mask_sign(self.id, v))
        return MaskedInput(self.id, y.tobytes()).to_bytes()

    @_step(Phase.UNMASK)
    def unmask(self, request: bytes) -> bytes:
        req = UnmaskRequest.from_bytes(request)
        if req.survivors & req.dropped:
            raise ProtocolViolation(
                f"client {self.id} refuses to reveal both b_u and s_u^SK of"
                f" {sorted(req.survivors & req.dropped)}"
            )
        if self.id not in req.survivors:
            raise ProtocolViolation(f"client {self.id} sent its masked input but is not a survivor")
        known = self._inbox.keys() | {self.id}
        if not (req.survivors | req.dropped) <= known:
            raise ProtocolViolation(
                f"client {self.id} holds no shares of {sorted(req.survivors | req.dropped - known)}"
            )
        shares = {u: self._open(u) for u in req.survivors | req.dropped}
        return UnmaskShares(
            self.id,
            {u: shares[u][0] for u in req.survivors},
            {u: shares[u][1] for u in req.dropped},
        ).to_bytes()

    def _open(self, sender: int) -> tuple[bytes, bytes]:
        """This client's (b share, s^SK share) of `sender`'s secrets."""
        if sender == self.id:
            return self._own_shares
        blob = self._inbox[sender]
        key = _kdf(self._c_key, self._peer_keys[sender][0], self.config.session, _SHARE_INFO)
        try:
            plain = ChaCha20Poly1305(key).decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], self._aad(sender, self.id)
            )
        except InvalidTag:
            raise ProtocolViolation(
                f"client {self.id}: share from {sender} fails authentication"
            ) from None
        cut = 4 + int.from_bytes(plain[:4], "big")
        return plain[4:cut], plain[cut:]


class SecAggServer:
    """The aggregator: routes messages, checks thresholds, removes masks, decodes the sum."""

    def __init__(self, config: SecAggConfig):
        self.config = config
        self.stats = PartyStats()
        self._next: Phase | None = Phase.ADVERTISE
        self.survivors: frozenset[int] = frozenset()  # clients whose inputs are in the sum

    def _parse(self, msgs: Mapping[int, bytes], kind: Any, allowed: frozenset[int]) -> dict:
        parsed = {}
        for sender, data in msgs.items():
            msg = kind.from_bytes(data)
            if msg.sender != sender or sender not in allowed:
                raise ProtocolViolation(f"{kind.__name__} from {sender} claims sender {msg.sender}")
            parsed[sender] = msg
        return parsed

    def _holders_alive(self, phase: Phase, u: int, alive: frozenset[int]) -> None:
        holders = (self.config.graph[u] | {u}) & alive & self._share_holders.get(u, alive | {u})
        _check_threshold(phase, u, len(holders), self.config.threshold)

    @_step(Phase.ADVERTISE)
    def collect_keys(self, msgs: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 0: AdvertiseKeys by client -> KeyBroadcast by client."""
        adverts = self._parse(msgs, AdvertiseKeys, frozenset(self.config.clients))
        for u, m in adverts.items():
            if len(m.c_public) != _KEY_BYTES or len(m.s_public) != _KEY_BYTES:
                raise ProtocolViolation(f"client {u} advertised keys that are not X25519 keys")
        self._u1 = frozenset(adverts)
        self._share_holders: dict[int, frozenset[int]] = {}
        for u in self._u1:
            self._holders_alive(Phase.ADVERTISE, u, self._u1)
        self._keys = {u: (m.c_public, m.s_public) for u, m in adverts.items()}
        return {
            u: KeyBroadcast({v: self._keys[v] for v in self.config.graph[u] & self._u1}).to_bytes()
            for u in self._u1
        }

    @_step(Phase.SHARE_KEYS)
    def collect_shares(self, msgs: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 1: ShareKeys by client -> ShareDelivery by client."""
        shared = self._parse(msgs, ShareKeys, self._u1)
        self._u2 = frozenset(shared)
        for u, m in shared.items():
            if not m.ciphertexts.keys() <= self.config.graph[u] & self._u1:
                raise ProtocolViolation(f"client {u} sent shares to non-neighbours")
            self._share_holders[u] = frozenset(m.ciphertexts) | {u}
        for u in self._u2:
            self._holders_alive(Phase.SHARE_KEYS, u, self._u2)
        inbox: dict[int, dict[int, bytes]] = {v: {} for v in self._u2}
        for u, m in shared.items():
            for v, ct in m.ciphertexts.items():
                if v in inbox:
                    inbox[v][u] = ct
        return {v: ShareDelivery(cts).to_bytes() for v, cts in inbox.items()}

    @_step(Phase.MASKED_INPUT)
    def collect_masked(self, msgs: Mapping[int, bytes]) -> dict[int, bytes]:
        """Round 2: MaskedInput by client -> UnmaskRequest by client."""
        masked = self._parse(msgs, MaskedInput, self._u2)
        u3 = frozenset(masked)
        dropped = self._u2 - u3
        for u in u3 | {d for d in dropped if self.config.graph[d] & u3}:
            self._holders_alive(Phase.MASKED_INPUT, u, u3)
        codec = self.config.codec
        self._total = np.zeros(self.config.dim, dtype=codec.dtype)  # (dim,)
        for u, m in masked.items():
            if len(m.masked) != self.config.dim * codec.dtype.itemsize:
                raise ProtocolViolation(f"masked input of client {u} has {len(m.masked)} bytes")
            self._total += np.frombuffer(m.masked, dtype=codec.dtype)
        self.survivors, self._dropped = u3, dropped
        out = {}
        for v in u3:
            hood = self.config.graph[v] & self._inbox_of(v)
            out[v] = UnmaskRequest((hood & u3) | {v}, hood & dropped).to_bytes()
        return out

    def _inbox_of(self, v: int) -> frozenset[int]:
        """Clients whose shares `v` holds."""
        return frozenset(u for u, h in self._share_holders.items() if v in h)

    @_step(Phase.UNMASK)
    def unmask(self, msgs: Mapping[int, bytes]) -> np.ndarray:
        """Round 3: UnmaskShares by client -> the float sum of the survivors' inputs."""
        replies = self._parse(msgs, UnmaskShares, self.survivors)
        b_shares: dict[int, list[Share]] = {u: [] for u in self.survivors}
        sk_shares: dict[int, list[Share]] = {
            u: [] for u in self._dropped if self.config.graph[u] & self.survivors
        }
        for v, m in replies.items():
            for wanted, got in ((b_shares, m.self_mask_shares), (sk_shares, m.key_shares)):
                for u, share in got.items():
                    if u not in wanted or v not in self._share_holders[u]:
                        raise ProtocolViolation(f"client {v} sent an unrequested share of {u}")
                    wanted[u].append(Share.from_bytes(share))
        t = self.config.threshold
        # every count is checked before anything is reconstructed
        for u, shares in (b_shares | sk_shares).items():
            _check_threshold(Phase.UNMASK, u, len(shares), t)
        total, session = self._total, self.config.session
        for shares in b_shares.values():
            _apply(total, reconstruct(shares, t), -1)
        for u, shares in sk_shares.items():
            sk = X25519PrivateKey.from_private_bytes(reconstruct(shares, t))
            for v in self.config.graph[u] & self.survivors:
                seed = _kdf(sk, self._keys[v][1], session, _MASK_INFO)
                _apply(total, seed, -_mask_sign(v, u))
        return self.config.codec.decode(total)
