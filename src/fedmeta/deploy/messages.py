"""The messages of a deployed round, as plain values <-> Flower records, and which configs a
deployment can carry (docs/deployment.md).

  server -> client `train`: ArrayRecord of the global parameters, and a header with the
    resolved config (TOML), round, attempt, client id, run id and the round's clip norm;
  client -> server: one ConfigRecord with the client id, the bytes sent (encoded update or
    secure aggregation's protocol message), weight, adaptive clipping's report and the
    signature's fields;
  server -> owner `evaluate` (a table's owners, who hold the rows): the global parameters and
    a header with the config, the split and round; owner -> server: its personalization
    figures (loss and accuracy before and after adaptation on its own episode), nothing else.
"""

from __future__ import annotations

import json
import math
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedmeta.config import Config
from fedmeta.errors import ConfigError
from fedmeta.federated.transport import Broadcast, Reply
from fedmeta.ledger.commitments import SignedUpdate
from fedmeta.params import Params

TRAIN, QUERY, EVALUATE = "train", "query", "evaluate"
HEADER, PARAMS, UPDATE, FIGURES = "header", "params", "update", "figures"
LAYOUT = "params_layout"  # header field: the parameters' names and shapes, in their one array's order
STEP_STATE = "fedmeta.step."  # + a client step's name: its state (e.g. the top-k residual) in the node's context



def check_deployable(cfg: Config) -> None:
    """Raise ConfigError for the options this runtime does not carry over the wire."""
    fed = cfg.federated
    if fed is None:
        raise ConfigError("federated", None, "a [federated] section (deployment runs are federated)")
    if fed.attack.name != "none":
        raise ConfigError("federated.attack.name", fed.attack.name, "'none' with fedmeta deploy (attacks are simulated in-process only)")
    for name in ("dropout_rate", "straggler_rate"):
        if getattr(fed.clients, name) > 0:
            raise ConfigError(f"federated.clients.{name}", getattr(fed.clients, name), "0 with fedmeta deploy (real clients drop out on their own)")


# -- the wire: plain values <-> Flower records ----------------------------------------------
def params_records(params: Params) -> tuple[dict[str, str], ArrayRecord]:
    """The parameters as one array, and the header field naming its pieces. Flower moves a
    message as a tree of objects, one HTTP request per object and hop, and an array is two
    objects: one array for the model, not one per tensor (17 objects a `train` message of
    a 6-tensor model, 6 now). Mixed dtypes keep one array per tensor."""
    if len({t.dtype for t in params.values()}) != 1:
        return {}, ArrayRecord(torch_state_dict=params)
    flat = torch.cat([t.detach().reshape(-1) for t in params.values()])
    return {LAYOUT: json.dumps([[n, list(t.shape)] for n, t in params.items()])}, ArrayRecord(torch_state_dict={"values": flat})


def read_params(content: RecordDict) -> Params:
    """The parameters `params_records` wrote, checked against their layout."""
    arrays = content[PARAMS].to_torch_state_dict()
    if LAYOUT not in content[HEADER]:
        return arrays
    pieces = [(str(n), tuple(int(d) for d in shape)) for n, shape in json.loads(str(content[HEADER][LAYOUT]))]
    flat, sizes = arrays.get("values"), [math.prod(shape) for _, shape in pieces]
    if flat is None or flat.dim() != 1 or flat.numel() != sum(sizes):
        raise ConfigError("params", "an array that does not match its layout", f"{sum(sizes)} values in one array")
    return {name: part.reshape(shape) for (name, shape), part in zip(pieces, flat.split(sizes), strict=True)}


def train_request(cfg_toml: str, b: Broadcast, round_: int, attempt: int, cid: int, run_key: str = "") -> RecordDict:
    """`run_key`: the fedmeta run's own id, under which a client keeps its state on disk."""
    layout, params = params_records(b.params)
    header = {"config": cfg_toml, "round": round_, "attempt": attempt, "client": cid, "run_id": b.run_id,
              "clip_norm": b.clip_norm, "run_key": run_key, **layout}
    return RecordDict({HEADER: ConfigRecord(header), PARAMS: params})


def train_reply(cid: int, reply: Reply) -> RecordDict:
    body: dict[str, Any] = {"client": cid, "data": reply.data, "weight": reply.weight, "report": reply.report}
    if reply.signed is not None:
        body.update({f"signed.{k}": v for k, v in reply.signed.to_dict().items()})
    return RecordDict({UPDATE: ConfigRecord(body)})


def read_reply(content: RecordDict) -> tuple[int, Reply]:
    body = content[UPDATE]
    fields = {k.removeprefix("signed."): v for k, v in body.items() if k.startswith("signed.")}
    signed = SignedUpdate.from_dict(fields) if fields else None
    return int(body["client"]), Reply(bytes(body["data"]), float(body["weight"]), float(body["report"]), signed)
