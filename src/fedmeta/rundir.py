"""A run folder: resolved config, metrics log, summary, checkpoints, final model.

Writes are atomic (temporary file + rename), so a crash at any instant leaves the folder
resumable from its last checkpoint. The checkpoint records how many metrics lines it
covers; resuming truncates lines written after it, so the log never repeats a round.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import torch

from fedmeta.config import Config, load_config
from fedmeta.errors import ConfigError

CHECKPOINT = "checkpoint.pt"


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, out: str | Path | None, config: Config) -> RunDir:
        """A new run folder (default `runs/<name>-<time>`); refuses to overwrite a run."""
        if out is None:
            out = Path("runs") / f"{config.run.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        path = Path(out)
        if (path / "config.toml").exists():
            raise ConfigError(
                "--out", str(path), "a new folder (this one holds a run; use --resume to continue it)"
            )
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        _atomic_write(path / "config.toml", config.to_toml().encode())
        return run

    @classmethod
    def open(cls, path: str | Path) -> tuple[RunDir, Config]:
        """An existing run folder and its resolved config, for `--resume` and reports."""
        p = Path(path)
        if not (p / "config.toml").is_file():
            raise ConfigError("--resume", str(p), "a run folder holding config.toml")
        return cls(p), load_config(p / "config.toml")

    # -- metrics ----------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def log(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]

    def write_json(self, name: str, obj: Any) -> None:
        _atomic_write(self.path / name, (json.dumps(obj, indent=2) + "\n").encode())

    # -- checkpoints ------------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        state = {**state, "metrics_lines": len(self.metrics())}
        tmp = self.path / (CHECKPOINT + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path / CHECKPOINT)

    def load_checkpoint(self) -> dict[str, Any] | None:
        """The last checkpoint, with the metrics log cut back to the lines it covers."""
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        state = torch.load(path, weights_only=False)
        lines = self.metrics()[: state["metrics_lines"]]
        _atomic_write(self.metrics_path, "".join(json.dumps(r) + "\n" for r in lines).encode())
        return state

    def save_model(self, params: dict[str, torch.Tensor], name: str = "model.pt") -> Path:
        path = self.path / name
        tmp = path.with_name(path.name + ".tmp")
        torch.save({k: v.detach().clone() for k, v in params.items()}, tmp)
        os.replace(tmp, path)
        return path
