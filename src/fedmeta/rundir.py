"""A run folder: resolved config, metrics log, summary, checkpoints, final model.

One writer at a time: `create` and `open(..., lock=True)` take an exclusive `fcntl` lock
on `.lock` in the folder for as long as the `RunDir` lives (or until `close`); a second
writer is refused at once with the holder's PID.

Durability is one sequence, commit then publish. `commit` writes the checkpoint
atomically (temporary file, fsync, rename): the driver's state after a step *and* what
that step publishes (its metrics rows, its ledger entry, the final files). Only then are
they published, each publication idempotent. A SIGKILL anywhere therefore leaves either
the previous checkpoint (the step is recomputed from it; nothing of it was published) or
the new one (its publications are repeated from it, never recomputed, so even noise drawn
from the OS is never drawn twice). The checkpoint records the byte length of
`metrics.jsonl` before its rows: publishing cuts the file there, which also drops a torn
last line. Checkpoints are loaded with `torch.load(weights_only=True)`: they hold tensors
and plain containers only, and a crafted file cannot run code.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import time
from pathlib import Path
from typing import Any

import torch

from fedmeta.config import Config, load_config
from fedmeta.errors import BadInput, ConfigError, FedmetaError

CHECKPOINT = "checkpoint.pt"
LOCK = ".lock"
FORMAT = 2  # checkpoint layout: {"format", "config_sha256", "state", "metrics_offset", "publish"}


class RunFolderError(BadInput):
    """A run folder that cannot be used as asked (in use, unreadable checkpoint, edited config)."""


def atomic_write(path: Path, data: bytes) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, whole."""
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_folder(name: str) -> Path:
    """Where a run (or a grid of runs) goes without --out: runs/<name>-<time>."""
    return Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock_fd: int | None = None
        self._committed: dict[str, Any] | None = None  # the last checkpoint written or read

    # -- opening ----------------------------------------------------------------------
    @classmethod
    def create(cls, out: str | Path | None, config: Config) -> RunDir:
        """A new run folder (default `runs/<name>-<time>`), locked; refuses to overwrite a run."""
        if out is None:
            out = default_folder(config.run.name)
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise ConfigError("--out", str(path), "a folder to hold the run (this is a file)")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError("--out", str(path), f"a folder that can be created ({err.strerror})") from None
        run = cls(path)
        run.lock("--out")  # taken before the check: two runs racing for one folder, one wins
        if (path / "config.toml").exists():
            run.close()
            raise ConfigError(
                "--out", str(path), "a new folder (this one holds a run; use --resume to continue it)"
            )
        try:
            atomic_write(path / "config.toml", config.to_toml().encode())
        except OSError as err:
            run.close()
            if err.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FedmetaError(f"{path}: cannot write config.toml ({err.strerror}); nothing "
                                   "was started: free space and run the same command again") from None
            raise ConfigError("--out", str(path), f"a folder this user can write ({err.strerror})") from None
        return run

    @classmethod
    def open(cls, path: str | Path, *, lock: bool = False) -> tuple[RunDir, Config]:
        """An existing run folder and its resolved config: locked for `--resume`, unlocked
        for reading (reports, verification)."""
        p = Path(path)
        if not (p / "config.toml").is_file():
            raise ConfigError("--resume", str(p), "a run folder holding config.toml")
        run = cls(p)
        if lock:
            run.lock("--resume")
        try:
            # a reader needs no data; a flat-layout config.toml (older runs) is read as is, its
            # bytes unchanged (the checkpoint and the ledger hold their SHA-256), with one notice
            return run, load_config(p / "config.toml", check_paths=lock, summarize_notices=True)
        except BaseException:
            run.close()
            raise

    def lock(self, field: str) -> None:
        """Become the folder's one writer, or raise naming the PID that is."""
        fd = os.open(self.path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if err.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise RunFolderError(field, str(self.path), f"a run folder no other process is writing (in use by PID {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd = fd

    def close(self) -> None:
        """Release the writer's lock (also released when the process ends)."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __del__(self) -> None:
        self.close()

    # -- metrics ----------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def metrics(self) -> list[dict[str, Any]]:
        """The metrics rows; a torn last line (a crash mid-write) is not a row."""
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_bytes().split(b"\n"):
            try:
                rows.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue  # the torn tail; cut at the next publication
        return rows

    def write_json(self, name: str, obj: Any) -> None:
        atomic_write(self.path / name, (json.dumps(obj, indent=2) + "\n").encode())

    # -- commit, then publish ---------------------------------------------------------
    @property
    def config_sha256(self) -> str:
        return file_sha256(self.path / "config.toml")

    def commit(self, state: dict[str, Any], publish: dict[str, Any]) -> None:
        """Checkpoint `state` with what the step publishes (`publish["rows"]`, metrics rows;
        anything else the driver's own publications read), then write the rows."""
        previous = self._committed
        offset = 0 if previous is None else previous["metrics_offset"] + len(_encode_rows(previous["publish"]["rows"]))
        checkpoint = {"format": FORMAT, "config_sha256": self.config_sha256, "state": state,
                      "metrics_offset": offset, "publish": publish}
        tmp = self.path / (CHECKPOINT + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            torch.save(checkpoint, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path / CHECKPOINT)
        _fsync_dir(self.path)
        self._committed = checkpoint
        self.publish_rows()

    def publish_rows(self) -> None:
        """`metrics.jsonl` cut to the committed offset, then the committed rows (idempotent)."""
        ck = self._committed
        if ck is None:
            return
        with open(self.metrics_path, "ab") as f:
            f.truncate(ck["metrics_offset"])
            f.write(_encode_rows(ck["publish"]["rows"]))
            f.flush()
            os.fsync(f.fileno())

    def read_checkpoint(self) -> dict[str, Any] | None:
        """The last committed checkpoint, or None before the first; refuses, naming the file,
        one that is unreadable, holds anything but tensors and plain containers (loading it
        could run code), or was written for another `config.toml`."""
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:
            ck = torch.load(path, weights_only=True)
            if not isinstance(ck, dict) or ck.get("format") != FORMAT:
                raise ValueError(f"not a fedmeta checkpoint of format {FORMAT}")
        except pickle.UnpicklingError:
            why = "it holds objects other than tensors and plain containers, refused unloaded"
        except Exception as err:  # any failure to parse the file (torch's unpickler raises IndexError, KeyError, ...)
            why = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        else:
            if ck["config_sha256"] != self.config_sha256:
                raise RunFolderError(str(self.path / "config.toml"), self.config_sha256,
                                     f"the config the run started with (SHA-256 {ck['config_sha256']}); "
                                     "a resumed run keeps its config")
            return ck
        raise RunFolderError(str(path), "unreadable", f"a checkpoint fedmeta wrote ({why}); this folder cannot be resumed")

    def load_checkpoint(self) -> dict[str, Any] | None:
        """`read_checkpoint`, then its metrics rows published again (the log cut to them)."""
        ck = self.read_checkpoint()
        if ck is not None:
            self._committed = ck
            self.publish_rows()
        return ck

    def save_model(self, params: dict[str, torch.Tensor], name: str = "model.pt") -> Path:
        """Write the final parameters once: an existing file (a repeated publication) stays."""
        path = self.path / name
        if not path.exists():
            tmp = path.with_name(path.name + f".tmp{os.getpid()}")
            with open(tmp, "wb") as f:
                torch.save({k: v.detach().clone() for k, v in params.items()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        return path


def _encode_rows(rows: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()
