"""A Flower supernode whose ClientApp stays loaded and whose exchanges wait no fixed sleeps:
`python -m fedmeta.deploy.supernode [--poll S] [--app MODULE:ATTR] -- FLOWER-SUPERNODE-ARGS`.

It runs Flower's own `flower-supernode` (same flags, same connection, authentication and
state) in this process with `--isolation process`, and starts `executor.py` beside it,
which runs every message in one loaded ClientApp instead of a new process per message.
The two share a random SuperExec secret (a private file, removed on exit), so no other
process on the machine can take the node's tasks from its Runtime API, and a pipe down
which the supernode wakes the executor for each message it stores.

Flower's supernode loop waits at most `--poll` s at a time here (`prompt.py`). A small
poll costs the superlink one request per supernode per poll: keep it around a second
with thousands of supernodes.
"""

from __future__ import annotations

import argparse
import atexit
import functools
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from fedmeta.deploy.executor import STOCK_APP
from fedmeta.deploy.prompt import prompt_supernode


def stop_with(executor: subprocess.Popen) -> None:
    """A supernode whose executor died would take tasks it never answers: it stops too."""
    code = executor.wait()
    if code in (-signal.SIGTERM, -signal.SIGINT):  # stopped with the supernode's process group
        return
    print(f"fedmeta supernode: the ClientApp executor exited with status {code}", file=sys.stderr)
    os.kill(os.getpid(), signal.SIGTERM)


def ring_once(fd: int) -> None:
    """One byte down the executor's wake pipe; a full pipe already holds a wake-up."""
    try:
        os.write(fd, b"!")
    except BlockingIOError:
        pass


def flower_args(args: list[str], secret_file: Path) -> list[str]:
    """Flower's supernode flags with the isolation this process needs."""
    return [*args, "--isolation", "process", "--superexec-auth-secret-file", str(secret_file)]


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    ours, flower = (argv[: argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else ([], argv)
    parser = argparse.ArgumentParser(prog="python -m fedmeta.deploy.supernode", description=__doc__.splitlines()[0])
    parser.add_argument("--poll", type=float, default=0.5, help="The longest wait between polls for work (s).")
    parser.add_argument("--app", default=STOCK_APP, help="The node's ClientApp, module:attribute.")
    args = parser.parse_args(ours)
    port = argparse.ArgumentParser(add_help=False)
    port.add_argument("--port", type=int, default=9094)
    runtime_port = port.parse_known_args(flower)[0].port

    folder = Path(tempfile.mkdtemp(prefix="fedmeta-supernode-"))  # 0700
    atexit.register(shutil.rmtree, folder, True)
    secret = folder / "superexec-secret"
    secret.write_bytes(secrets.token_bytes(32))
    secret.chmod(0o600)
    from fedmeta.deploy.launch import die_with_parent

    wake, ring = os.pipe()  # a byte per message the supernode stores: the executor asks for it at once
    os.set_blocking(ring, False)
    executor = subprocess.Popen(  # noqa: PLW1509  (prctl, getppid, kill: async-signal-safe)
        [sys.executable, "-m", "fedmeta.deploy.executor", "--runtime-api-address", f"127.0.0.1:{runtime_port}",
         "--app", args.app, "--secret-file", str(secret), "--poll", str(args.poll), "--parent-pid", str(os.getpid()),
         "--wake-fd", str(wake)],
        preexec_fn=die_with_parent(), pass_fds=(wake,))
    os.close(wake)
    threading.Thread(target=stop_with, args=(executor,), daemon=True).start()
    if not prompt_supernode(args.poll, functools.partial(ring_once, ring)):
        print("fedmeta supernode: this Flower's supernode loop keeps its own sleeps", file=sys.stderr)
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *flower_args(flower, secret)]
    flower_supernode()


if __name__ == "__main__":
    main()
