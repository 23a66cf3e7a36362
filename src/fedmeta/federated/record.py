"""A federated run's ledger: every model version, its parent, the updates that made it.

The ledger is one of a run's publications (`fedmeta.rundir`): each step is committed to
the checkpoint first, then published here, and every method below is idempotent, so a
resumed run repeats the committed step's publication without logging anything twice. The
ledger itself is created atomically with its `start` entry (run id, SHA-256 of
`config.toml`, the initial model); a round's refused updates and its `round` entry are
one batch under one signed tree head; the `end` entry records the SHA-256 of the files a
user relies on (`model.pt`, `personalization.json`). A finished run seals the tree head
that covers its `end` entry into `summary.json`, so a ledger cut back later shows without
outside help. Models are stored content-addressed as their wire encoding
(`models/<sha256>.pt`).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from fedmeta.config import Config
from fedmeta.errors import VerificationError
from fedmeta.federated.wire import encode, raw
from fedmeta.ledger import RunLedger, store_model, verify_ledger
from fedmeta.ledger.keys import load_or_create_private_key, public_key_hex
from fedmeta.ledger.log import LEDGER_FILE
from fedmeta.meta.base import Params

CONFIG_FILE = "config.toml"


def default_server_key() -> Path:
    """`$FEDMETA_HOME/server_key.pem` (default `~/.fedmeta`): kept outside run folders."""
    return Path(os.environ.get("FEDMETA_HOME", Path.home() / ".fedmeta")) / "server_key.pem"


def model_bytes(params: Params) -> bytes:
    return encode({k: raw(v) for k, v in params.items()})


class RunRecord:
    def __init__(self, cfg: Config, run_dir: Path):
        key_path = Path(cfg.ledger.server_key) if cfg.ledger.server_key else default_server_key()
        self.key = load_or_create_private_key(key_path)
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.ledger: RunLedger | None = None
        self.chain: Any = None  # the web3 connection of `ledger.anchor`, made when first needed
        self.anchored_here: set[str] = set()  # anchor transactions sent by this process

    @property
    def public_key(self) -> str:
        return public_key_hex(self.key.public_key())

    def _open(self, run_id: str) -> RunLedger:
        """The run's ledger, which must be this run's (`run_id`)."""
        if self.ledger is None:
            self.ledger = RunLedger.open(self.run_dir, self.key)
        if self.ledger.run_id != run_id:
            raise VerificationError(f"run id of {self.run_dir / LEDGER_FILE}", run_id, self.ledger.run_id)
        return self.ledger

    @property
    def parent(self) -> str:
        """The model the next round must name as its parent."""
        return self.ledger.last_model or self.ledger.start_entry_body["extra"]["initial_model_sha256"]

    def start(self, run_id: str, params: Params, more: dict[str, Any] | None = None) -> None:
        """The `start` entry over the initial model, with `more` (a table's schema and files,
        the parts given from Python) (once: an existing ledger must be this run's)."""
        initial = store_model(self.run_dir, model_bytes(params))
        if (self.run_dir / LEDGER_FILE).exists():
            self._open(run_id)
            return
        from fedmeta import __version__

        config_hash = hashlib.sha256((self.run_dir / CONFIG_FILE).read_bytes()).hexdigest()
        extra = {"initial_model_sha256": initial, "config_file": CONFIG_FILE, **(more or {})}
        self.ledger = RunLedger.begin(self.run_dir, self.key, config_hash, __version__,
                                      dict(self.cfg.ledger.participants), extra, run_id=run_id)

    def round(self, run_id: str, params: Params, entry: dict[str, Any]) -> None:
        """The round's `round` entry and refusals (once: a logged round must hold this model)."""
        ledger = self._open(run_id)
        sha = store_model(self.run_dir, model_bytes(params))
        r = entry["round"]
        if ledger.last_round is not None and r <= ledger.last_round:  # published before a crash
            if r == ledger.last_round and sha != ledger.last_model:
                raise VerificationError(f"round {r} model on resume", ledger.last_model, sha)
        else:
            ledger.round(r, sha, self.parent, sorted(entry["commitments"]), entry["commitments"],
                         entry["aggregation"], entry["epsilon"], entry["delta"], entry["metrics"],
                         entry["rejected"], entry["refused"])
        if r % (self.cfg.ledger.anchor_every or 1) == 0 and ledger.last_round == r:
            self._anchor(ledger)

    def _anchor(self, ledger: RunLedger) -> None:
        """Write the latest signed root on `ledger.anchor`'s chain and record it, unless the
        latest entry already is its anchor (published before a crash)."""
        if not self.cfg.ledger.anchor or ledger.last_type == "anchor":
            return
        from fedmeta.ledger.anchor import anchor_latest, chain_for

        if self.chain is None:
            self.chain = chain_for(self.cfg.ledger.anchor)
        anchor_latest(ledger, self.chain)
        self.anchored_here.add(ledger.anchor_txs[-1])

    def end(self, run_id: str, params: Params, summary: dict[str, Any], files: dict[str, str]) -> dict[str, Any]:
        """The `end` entry (once), the ledger verified from disk, and the seal for the summary:
        the signed tree head that covers the `end` entry."""
        ledger = self._open(run_id)
        if not ledger.ended:
            ledger.end(store_model(self.run_dir, model_bytes(params)), summary, files)
        self._anchor(ledger)  # the final root, on chain too
        size, anchors = ledger.end_size, list(ledger.anchor_txs)
        head = next(h for h in ledger.ledger.tree_heads() if h.size == size)
        ledger.close()
        self.ledger = None
        # eth-tester's chain lives in this process: anchors sent before a resume are gone with it
        on_chain = bool(anchors) and (self.cfg.ledger.anchor != "eth-tester" or set(anchors) <= self.anchored_here)
        verify_ledger(self.run_dir, public_key=self.public_key, anchor=self.chain if on_chain else None)
        seal = {
            "entries": size,
            "run_id": run_id,
            "root": head.root.hex(),
            "timestamp_ms": head.timestamp_ms,
            "signature": head.signature.hex(),
            "server_public_key": self.public_key,
            "verified": True,
        }
        if anchors:
            seal["anchors"] = {"count": len(anchors), "checked_on_chain": on_chain}
        return seal
