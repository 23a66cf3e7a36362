"""A federated run's ledger: every model version, its parent, the updates that made it.

Round entries go to the signed Merkle log (`fedmeta.ledger`) before the round's
checkpoint, so the ledger is never behind the checkpoint; a resumed run recomputes the
rounds past its checkpoint deterministically and checks that a round the ledger already
holds produced the same model, instead of logging it twice. Models are stored
content-addressed as their wire encoding (`models/<sha256>.pt`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from fedmeta.config import Config
from fedmeta.errors import VerificationError
from fedmeta.federated.wire import encode, raw
from fedmeta.ledger import RunLedger, store_model, verify_ledger
from fedmeta.ledger.keys import load_or_create_private_key, public_key_hex
from fedmeta.meta.base import Params


def default_server_key() -> Path:
    """`$FEDMETA_HOME/server_key.pem` (default `~/.fedmeta`): kept outside run folders."""
    return Path(os.environ.get("FEDMETA_HOME", Path.home() / ".fedmeta")) / "server_key.pem"


def model_bytes(params: Params) -> bytes:
    return encode({k: raw(v) for k, v in params.items()})


class RunRecord:
    def __init__(self, cfg: Config, run_dir: Path, params: Params, *, resume: bool):
        key_path = Path(cfg.ledger.server_key) if cfg.ledger.server_key else default_server_key()
        self.key = load_or_create_private_key(key_path)
        self.run_dir = run_dir
        if resume and (run_dir / "ledger.db").exists():
            self.ledger = RunLedger.open(run_dir, self.key)
            start = json.loads(next(self.ledger.ledger.entries())[1])
            self.parent = self.ledger.last_model or start["extra"]["initial_model_sha256"]
            self.run_id = start["run_id"]
        else:
            self.ledger = RunLedger.create(run_dir, self.key)
            self.parent = store_model(run_dir, model_bytes(params))
            config_hash = hashlib.sha256((run_dir / "config.toml").read_bytes()).hexdigest()
            from fedmeta import __version__

            participants = dict(cfg.ledger.participants)
            self.ledger.start(config_hash, __version__, participants, {"initial_model_sha256": self.parent})
            self.run_id = self.ledger.run_id

    @property
    def public_key(self) -> str:
        return public_key_hex(self.key.public_key())

    def round(self, round_: int, params: Params, commitments: dict[str, str], info: dict[str, Any],
              aggregation: str, privacy: dict[str, Any], refused: list[dict[str, Any]] = ()) -> None:
        sha = store_model(self.run_dir, model_bytes(params))
        logged = self.ledger.last_round
        if logged is not None and round_ <= logged:  # replayed after a resume
            if round_ == logged and sha != self.ledger.last_model:
                raise VerificationError(f"round {round_} model on resume", self.ledger.last_model, sha)
            self.parent = sha
            return
        for rejection in refused:  # signature, key and replay refusals, each its own entry
            self.ledger.rejection(**rejection)
        metrics = {k: info[k] for k in ("clients", "sampled", "dropped", "bytes_up", "bytes_down") if k in info}
        self.ledger.round(round_, sha, self.parent, sorted(commitments), commitments, aggregation, privacy.get("epsilon"), privacy.get("delta"), metrics, info.get("rejected", []))
        self.parent = sha

    def end(self, summary: dict[str, Any]) -> dict[str, Any]:
        """Close the ledger, verify it from disk, and describe it for the summary."""
        self.ledger.end(self.parent, summary)
        size = self.ledger.ledger.size
        self.ledger.close()
        verify_ledger(self.run_dir, public_key=self.public_key)
        return {"entries": size, "server_public_key": self.public_key, "verified": True}
