"""Fault injection at a run's write points, for the durability tests.

A write point is every call that makes a run's state durable or visible: `os.fsync`,
`os.replace`, a ledger batch (`Ledger.append`), and writing metrics rows. `inject(n, how)`
makes the n-th of them fail *before* it happens: `how="crash"` raises `Crash` (a
`BaseException`, which no `except Exception` in the runtime swallows), `how="sigkill"`
kills the process on the spot, `how="enospc"` raises `OSError(ENOSPC)` as a full disk
would; `how="count"` only counts. The metrics write can also be torn: half of its bytes
land before the fault.
"""

from __future__ import annotations

import errno
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from fedmeta import rundir
from fedmeta.ledger import log


class Crash(BaseException):
    """A simulated SIGKILL: unwinds without running the runtime's error handling."""


class Counter:
    def __init__(self, at: int | None, how: str):
        self.at, self.how, self.seen = at, how, 0
        self.points: list[str] = []

    def hit(self, what: str) -> None:
        self.seen += 1
        self.points.append(what)
        if self.seen != self.at:
            return
        if self.how == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.how == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise Crash(f"fault at write point {self.seen} ({what})")


@contextmanager
def inject(at: int | None = None, how: str = "crash") -> Iterator[Counter]:
    counter = Counter(at, how)
    fsync, replace, append, publish = os.fsync, os.replace, log.Ledger.append, rundir.RunDir.publish_rows

    def fsync_(fd):
        counter.hit("fsync")
        return fsync(fd)

    def replace_(src, dst, *a, **k):
        counter.hit(f"replace {os.path.basename(dst)}")
        return replace(src, dst, *a, **k)

    def append_(self, entries):
        counter.hit(f"ledger append {[e['type'] for e in entries]}")
        return append(self, entries)

    def publish_(self):
        ck = self._committed
        if ck is not None and counter.seen + 1 == counter.at and ck["publish"]["rows"]:
            data = rundir._encode_rows(ck["publish"]["rows"])  # a torn write: half the bytes land
            with open(self.metrics_path, "ab") as f:
                f.truncate(ck["metrics_offset"])
                f.write(data[: len(data) // 2])
        counter.hit("metrics rows")
        return publish(self)

    os.fsync, os.replace = fsync_, replace_
    log.Ledger.append, rundir.RunDir.publish_rows = append_, publish_
    try:
        yield counter
    finally:
        os.fsync, os.replace = fsync, replace
        log.Ledger.append, rundir.RunDir.publish_rows = append, publish
