"""Run one command so that it, and every process it starts, dies with the process that
started this guard (Linux): `python -I guard.py PARENT_PID -- CMD ...`.

Flower's processes start their own children (the superlink a superexec in a new session,
which starts the ServerApp; each supernode a superexec, which starts ClientApps), and those
only watch their direct parent's pid, which does not always bring them down. So the guard

- asks the kernel for a signal when its parent dies, even by SIGKILL (PR_SET_PDEATHSIG),
- becomes a child subreaper (PR_SET_CHILD_SUBREAPER), so every orphaned descendant is
  re-parented to it instead of to init and stays findable,
- when its parent dies: kills every descendant (walking /proc until none is left) and exits;
- when the command exits: gives what it left behind a few seconds to end on its own, then
  kills it, and exits with the command's status.

SIGTERM/SIGINT to the guard's process group reach the command as usual (graceful shutdown);
the guard itself keeps waiting for it. SIGUSR1 means "kill everything now".

Run as a file, not as a module, so it imports nothing but the standard library.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time

PR_SET_PDEATHSIG, PR_SET_CHILD_SUBREAPER = 1, 36  # linux/prctl.h
GRACE = 3.0  # seconds left to the command's own children after it exits


def descendants(root: int) -> list[int]:
    """Every live process below `root`, from /proc's parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def kill_all() -> None:
    """SIGKILL every descendant until none is left (the orphans of a killed one come back to
    this subreaper and are found by the next walk); bounded."""
    for _ in range(100):
        pids = descendants(os.getpid())
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
        reap()


def main(argv: list[str]) -> int:
    parent, cmd = int(argv[1]), argv[3:]
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)

    def orphaned(*_: object) -> None:
        kill_all()
        os._exit(128 + signal.SIGKILL)

    signal.signal(signal.SIGUSR1, orphaned)
    signal.signal(signal.SIGTERM, lambda *_: None)  # the group's SIGTERM is for the command
    signal.signal(signal.SIGINT, lambda *_: None)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGUSR1, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the signal was armed
        return 1

    def die_with_guard() -> None:  # if the guard itself is SIGKILLed, the command goes too
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)

    child = subprocess.Popen(cmd, preexec_fn=die_with_guard)  # noqa: PLW1509  (prctl only)
    status = None
    while status is None:
        try:
            pid, code = os.waitpid(-1, 0)  # the command, or an orphan re-parented here
        except ChildProcessError:
            break
        if pid == child.pid:
            status = os.waitstatus_to_exitcode(code)
    stop = time.monotonic() + GRACE
    while descendants(os.getpid()) and time.monotonic() < stop:
        reap()
        time.sleep(0.1)
    kill_all()
    return 1 if status is None else status if status >= 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
