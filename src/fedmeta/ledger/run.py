"""The ledger of one federated run: typed entries over the signed Merkle log.

Entries (canonical JSON, each with a ``type``): ``start`` (config hash, software version,
participants' public keys, the server's public key, run id), ``round`` (model hash, parent
hash, contributors, their signed update commitments, aggregation, ε and δ, metrics,
rejected updates), ``rejection`` (one refused update), ``anchor`` (a root written to a
chain) and ``end``. Each call appends one entry and signs a tree head. Model weights are
stored content-addressed, ``models/<sha256>.pt`` in the run folder; the ledger holds only
the hash, and verification recomputes it from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Self

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmeta.errors import BadInput
from fedmeta.ledger import keys
from fedmeta.ledger.log import LEDGER_FILE, Ledger, TreeHead

MODELS_DIR = "models"


def model_path(run_dir: str | Path, sha256_hex: str) -> Path:
    return Path(run_dir) / MODELS_DIR / f"{sha256_hex}.pt"


def store_model(run_dir: str | Path, data: bytes) -> str:
    """Write `data` to `models/<sha256>.pt` under `run_dir` (atomically) and return the hash."""
    digest = hashlib.sha256(data).hexdigest()
    path = model_path(run_dir, digest)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    return digest


def _run_dir(path: str | Path) -> Path:
    """The run folder of a ledger given as the folder or as its `ledger.db`."""
    path = Path(path)
    return path.parent if path.suffix == ".db" else path


class RunLedger:
    """Typed, signed record of one run; `create` for a new run, `open` to resume or read."""

    def __init__(self, ledger: Ledger, run_dir: Path):
        self.ledger, self.run_dir = ledger, run_dir
        self.run_id: str | None = None
        self.start_entry_body: dict[str, Any] | None = None
        self.last_round: int | None = None
        self.last_model: str | None = None
        self.ended = False
        self.end_size: int | None = None  # tree size that covers the `end` entry
        self.tracked = 0
        self.last_type: str | None = None
        self.anchor_txs: list[str] = []  # the anchor entries' transactions, in order
        for _, body, _ in ledger.entries():
            self._track(json.loads(body))

    @classmethod
    def create(cls, path: str | Path, server_key: Ed25519PrivateKey) -> RunLedger:
        run_dir = _run_dir(path)
        return cls(Ledger.create(run_dir / LEDGER_FILE, server_key), run_dir)

    @classmethod
    def open(cls, path: str | Path, server_key: Ed25519PrivateKey | None = None) -> RunLedger:
        run_dir = _run_dir(path)
        return cls(Ledger.open(run_dir / LEDGER_FILE, server_key), run_dir)

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _track(self, entry: dict[str, Any]) -> None:
        self.tracked += 1
        kind = self.last_type = entry.get("type")
        if kind == "start":
            self.run_id, self.start_entry_body = entry["run_id"], entry
        elif kind == "round":
            self.last_round, self.last_model = entry["round"], entry["model_sha256"]
        elif kind == "end":
            self.ended, self.end_size = True, self.tracked
        elif kind == "anchor":
            self.anchor_txs.append(entry["tx_hash"])

    def _append(self, *entries: dict[str, Any]) -> TreeHead:
        """Append `entries` in one transaction under one signed tree head."""
        for entry in entries:
            if entry["type"] != "start" and self.run_id is None:
                raise BadInput("ledger entry", entry["type"], "a `start` entry first")
            if self.ended and entry["type"] != "anchor":
                raise BadInput("ledger entry", entry["type"], "only anchors after the `end` entry")
        head = self.ledger.append(list(entries))
        for entry in entries:
            self._track(entry)
        return head

    def _require_model(self, field: str, sha256_hex: str) -> None:
        if not model_path(self.run_dir, sha256_hex).is_file():
            raise BadInput(
                field, sha256_hex, f"the hash of a file stored by store_model in {self.run_dir}"
            )

    @staticmethod
    def start_entry(
        config_hash: str,
        software_version: str,
        participants: dict[str, str],
        server_public_key: str,
        extra: dict[str, Any] | None = None,
        run_id: str | None = None,
    ) -> dict[str, Any]:
        for client_id, public in participants.items():
            keys.load_public_key(public, field=f"ledger.participants.{client_id}")
        return {
            "type": "start",
            "run_id": run_id or uuid.uuid4().hex,
            "config_hash": config_hash,
            "software_version": software_version,
            "participants": dict(participants),
            "server_public_key": server_public_key,
            "extra": extra or {},
        }

    @classmethod
    def begin(
        cls,
        path: str | Path,
        server_key: Ed25519PrivateKey,
        config_hash: str,
        software_version: str,
        participants: dict[str, str],
        extra: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> RunLedger:
        """A new ledger holding its signed `start` entry, created atomically (all or nothing)."""
        public = keys.public_key_hex(server_key)
        entry = cls.start_entry(config_hash, software_version, participants, public, extra, run_id)
        run_dir = _run_dir(path)
        return cls(Ledger.create(run_dir / LEDGER_FILE, server_key, [entry]), run_dir)

    def start(
        self,
        config_hash: str,
        software_version: str,
        participants: dict[str, str],
        extra: dict[str, Any] | None = None,
        *,
        run_id: str | None = None,
    ) -> TreeHead:
        """First entry: what runs, who may contribute (client id -> public key hex), who signs."""
        if self.ledger.size:
            raise BadInput("start", self.ledger.path, "an empty ledger")
        return self._append(
            self.start_entry(
                config_hash, software_version, participants, self.ledger.public_key, extra, run_id
            )
        )

    def round(
        self,
        round: int,
        model_sha256: str,
        parent_sha256: str,
        clients: list[str],
        update_commitments: dict[str, str],
        aggregation: str,
        epsilon: float | None,
        delta: float | None,
        metrics: dict[str, Any],
        rejected: list[dict[str, Any]],
        refused: Sequence[dict[str, Any]] = (),
    ) -> TreeHead:
        """One aggregated round; `parent_sha256` must be the previous round's model. The
        round's `refused` updates (`rejection` keywords) are appended with it, in one batch."""
        if self.last_round is not None and round <= self.last_round:
            raise BadInput("round", round, f"a round after {self.last_round}")
        if self.last_model is not None and parent_sha256 != self.last_model:
            raise BadInput(
                "parent_sha256", parent_sha256, f"the previous round's model {self.last_model}"
            )
        self._require_model("model_sha256", model_sha256)
        return self._append(
            *(self._rejection_entry(**r) for r in refused),
            {
                "type": "round",
                "round": round,
                "model_sha256": model_sha256,
                "parent_sha256": parent_sha256,
                "clients": list(clients),
                "update_commitments": dict(update_commitments),
                "aggregation": aggregation,
                "epsilon": epsilon,
                "delta": delta,
                "metrics": metrics,
                "rejected": list(rejected),
            }
        )

    def rejection(self, round: int, client_id: str, reason: str, detail: str = "") -> TreeHead:
        """An update the server refused (see `fedmeta.ledger.commitments.RejectReason`)."""
        return self._append(self._rejection_entry(round, client_id, reason, detail))

    @staticmethod
    def _rejection_entry(round: int, client_id: str, reason: str, detail: str = "") -> dict[str, Any]:
        return {
            "type": "rejection",
            "round": round,
            "client_id": client_id,
            "reason": reason,
            "detail": detail,
        }

    def anchored(self, size: int, root_hex: str, chain_id: int, tx_hash: str) -> TreeHead:
        """Record that the root at `size` was written to chain `chain_id` in `tx_hash`."""
        return self._append(
            {
                "type": "anchor",
                "size": size,
                "root": root_hex,
                "chain_id": chain_id,
                "tx_hash": tx_hash,
            }
        )

    def end(
        self,
        final_model_sha256: str,
        summary: dict[str, Any],
        files: dict[str, str] | None = None,
    ) -> TreeHead:
        """Last entry; the final model must be the last round's. `files` maps run-folder
        files a user relies on (the final `model.pt`, ...) to their SHA-256, which
        verification recomputes."""
        if self.last_model is not None and final_model_sha256 != self.last_model:
            raise BadInput(
                "final_model_sha256",
                final_model_sha256,
                f"the last round's model {self.last_model}",
            )
        self._require_model("final_model_sha256", final_model_sha256)
        entry = {"type": "end", "final_model_sha256": final_model_sha256, "summary": summary}
        if files:
            entry["files"] = dict(files)
        return self._append(entry)
