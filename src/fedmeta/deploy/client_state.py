"""A supernode's client-step state on its own disk, so that a resumed deployment resumes it.

In-process, each client's step state (the top-k residual: what compression has not sent
yet) is part of the server's checkpoint. Deployed, it belongs to the client and lives in
the node's Flower context, which a new Flower run (a restarted superlink resuming the
fedmeta run from its checkpoint) starts empty. With `state-dir` in the node's config
(`fedmeta deploy supernode --state-dir DIR`), the client also writes its state after each
(round, attempt) it answers, under `DIR/<run>/client-<id>/`, where `<run>` is the fedmeta
run's own id (`run_key` in the train header, kept in the server's checkpoint), and reads
back the latest one *before* the (round, attempt) it is asked for. That is the state the
in-process run would hold at the same point, including after a server crash that lost the
last round: the client's files for that round are newer and not read.

Files are written whole and renamed into place, read with torch's weights-only loader
(no unpickling), and only the last `KEEP` are kept.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

from fedmeta.errors import ConfigError

KEEP = 3  # the server checkpoints every round: at most the last round's files are ahead of it
_FILE = re.compile(r"round-(\d+)-attempt-(\d+)\.pt")
_RUN_KEY = re.compile(r"[0-9a-f]{32}")  # a uuid4 hex, as the driver makes it

States = dict[str, dict[str, torch.Tensor]]


class ClientStateStore:
    def __init__(self, folder: str | os.PathLike, run_key: str, cid: int):
        if not _RUN_KEY.fullmatch(run_key):
            raise ConfigError("run_key", run_key, "the fedmeta run's id (32 hex digits) from the server's train header")
        self.path = Path(folder) / run_key / f"client-{cid}"

    def _files(self) -> list[tuple[tuple[int, int], Path]]:
        if not self.path.is_dir():
            return []
        found = ((_FILE.fullmatch(p.name), p) for p in self.path.iterdir())
        return sorted(((int(m[1]), int(m[2])), p) for m, p in found if m)

    def load(self, round_: int, attempt: int) -> States:
        """The state written at the latest (round, attempt) before this one, or none."""
        earlier = [p for at, p in self._files() if at < (round_, attempt)]
        if not earlier:
            return {}
        return torch.load(earlier[-1], weights_only=True)

    def save(self, round_: int, attempt: int, states: States) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / f"round-{round_}-attempt-{attempt}.pt"
        partial = final.with_suffix(".partial")
        torch.save(states, partial)
        with open(partial, "rb") as f:
            os.fsync(f.fileno())
        os.replace(partial, final)
        for _, old in self._files()[:-KEEP]:
            old.unlink(missing_ok=True)
