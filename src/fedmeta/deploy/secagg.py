"""A supernode's side of secure aggregation over Flower messages (Bonawitz et al., CCS 2017;
SecAgg+ of Bell et al., CCS 2020): the `SecAggClient` state machine of
`privacy/secagg/protocol.py`, driven by four exchanges of one round.

  train                → the client's update (privatized, checked), then `advertise`
  train.share_keys     → `share_keys(KeyBroadcast)`
  train.masked_input   → `masked_input(ShareDelivery, [w·row, w])`
  train.unmask         → `unmask(UnmaskRequest)`

Flower may start a fresh ClientApp process for every message, so the client's secrets
live in the node's own `context.state` (never in a reply): a 32-byte seed of a ChaCha20
key stream (RFC 8439) from which the state machine draws every key, share and nonce, the
public messages it has received, and the update. Each step rebuilds the state machine by
replaying the earlier steps from that seed, which reproduces the same keys and shares.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedmeta.errors import FedmetaError
from fedmeta.params import Params, weighted_rows
from fedmeta.privacy.secagg.protocol import SecAggClient, SecAggConfig

SHARE_KEYS, MASKED_INPUT, UNMASK = "train.share_keys", "train.masked_input", "train.unmask"
SECAGG, ROW = "fedmeta.secagg", "fedmeta.secagg.row"  # the node's secrets and its summand, in its Flower context
PROTOCOL = "secagg"  # the message record: public parameters, and the phase's protocol bytes (`data`)


class KeyStream:
    """Bytes of the ChaCha20 key stream under a secret seed, in order of request."""

    def __init__(self, seed: bytes):
        self._stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), mode=None).encryptor()

    def __call__(self, n: int) -> bytes:
        return self._stream.update(bytes(n))


def in_order(row: Params) -> Params:
    """A summand's tensors in one agreed order (by name), as both sides flatten them."""
    return dict(sorted(row.items()))


def config_header(config: SecAggConfig, tag: str) -> dict[str, Any]:
    """The public parameters every party needs, as a ConfigRecord; `tag` names the round."""
    return {"tag": tag, "clients": list(config.clients), "threshold": config.threshold, "dim": config.dim,
            "clip": config.clip, "bits": config.bits, "neighbourhood": config.neighbourhood,
            "session": config.session}


def config_of(header: dict[str, Any]) -> SecAggConfig:
    return SecAggConfig(clients=tuple(int(c) for c in header["clients"]), threshold=int(header["threshold"]),
                        dim=int(header["dim"]), clip=float(header["clip"]), bits=int(header["bits"]),
                        neighbourhood=str(header["neighbourhood"]), session=bytes(header["session"]))


def request(header: dict[str, Any], payload: bytes, **extra: Any) -> RecordDict:
    """A server → client message of phases 1-3: one record (each record is one more object
    Flower pushes and pulls over HTTP)."""
    return RecordDict({PROTOCOL: ConfigRecord({**header, "data": payload, **extra})})


def start(state: RecordDict, header: dict[str, Any], cid: int, row: Params, keep: dict[str, Any]) -> bytes:
    """Phase 0 on the node: keep the summand, a fresh seed and `keep` (what the node needs
    later: round, signing key path), return AdvertiseKeys."""
    seed = secrets.token_bytes(32)
    state[SECAGG] = ConfigRecord({"header": json.dumps({k: v for k, v in header.items() if k != "session"}),
                                  "session": bytes(header["session"]), "client": cid, "seed": seed, **keep})
    state[ROW] = ArrayRecord(torch_state_dict=row)
    return SecAggClient(config_of(header), cid, _randbytes=KeyStream(seed)).advertise()


def step(kind: str, state: RecordDict, content: RecordDict) -> bytes:
    """Phases 1-3 on the node: replay the earlier steps from the kept seed, run this one."""
    if SECAGG not in state:
        raise FedmetaError(f"{kind}: this node holds no secure-aggregation state (restarted mid-round?)")
    mine, header = state[SECAGG], content[PROTOCOL]
    kept = json.loads(str(mine["header"]))
    if kept["tag"] != header["tag"]:
        raise FedmetaError(f"{kind} for round {header['tag']}, but this node is in round {kept['tag']}")
    cid = int(mine["client"])
    client = SecAggClient(config_of({**kept, "session": mine["session"]}), cid,
                          _randbytes=KeyStream(bytes(mine["seed"])))
    client.advertise()
    payload = bytes(header["data"])
    if kind == SHARE_KEYS:
        mine["broadcast"] = payload
        return client.share_keys(payload)
    client.share_keys(bytes(mine["broadcast"]))
    if kind == MASKED_INPUT:
        mine["delivery"], mine["scaled"] = payload, float(header["weight"])
    row = weighted_rows([in_order(state[ROW].to_torch_state_dict())], [float(mine["scaled"])])[0]  # (dim,)
    masked = client.masked_input(bytes(mine["delivery"]), row)
    if kind == MASKED_INPUT:
        return masked
    shares = client.unmask(payload)
    del state[SECAGG], state[ROW]  # the round is over for this node
    return shares


__all__ = ["KeyStream", "MASKED_INPUT", "PROTOCOL", "SHARE_KEYS", "UNMASK", "config_header", "config_of", "request", "start", "step"]
