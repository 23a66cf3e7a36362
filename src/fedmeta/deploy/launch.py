"""Command lines and files for Flower's deployment runtime (flwr 1.41), and a loopback
federation (one superlink, N supernodes, `flwr run`) that is always torn down.

- `write_app`: the Flower app folder `flwr run` ships to the superlink: a pyproject.toml
  naming `fedmeta.deploy.serverapp:server_app` / `fedmeta.deploy.clientapp:client_app` and the run config (config
  path, run folder, deadlines). The code itself is the installed `fedmeta` package, so
  the superlink and supernodes run with `--disable-runtime-dependency-installation`.
- `superlink_command` / `supernode_command`: TLS certificates are passed through to
  Flower's own flags (`--ssl-*` on the superlink, `--root-certificates` on supernodes);
  `tls=None` means `--insecure`, for loopback only. Node authentication too: the superlink's
  `--enable-supernode-auth` (TLS only; keys registered with `flwr supernode register`, kept
  across restarts by `--database`) and each supernode's `--auth-supernode-private-key`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedmeta.errors import BadInput, FedmetaError

CONNECTION = "fedmeta"  # the connection name written into $FLWR_HOME/config.toml
# Flower's superexec, which starts the superlink's ServerApp process, asks for work every 1 s
# by default (flwr/supercore/superexec/run_superexec.py)
PROMPT_ENV = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.1"}
LOCAL_POLL = 0.2  # the longest wait between a loopback supernode's polls (prompt.Backoff)


@dataclass(frozen=True)
class TLS:
    """PEM files: the CA that signed the superlink's certificate, and (superlink side) its
    certificate and private key."""

    ca: Path
    cert: Path | None = None
    key: Path | None = None


def _toml(value: Any) -> str:
    return json.dumps(value) if isinstance(value, str) else str(value).lower() if isinstance(value, bool) else str(value)


def binary(name: str) -> str:
    """A Flower executable: next to this Python (the same environment), else on PATH."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        raise BadInput("flwr", name, "Flower's executables installed (pip install flwr)")
    return found


def write_app(folder: Path, run_config: dict[str, Any]) -> Path:
    """The app folder for `flwr run`; `run_config` becomes `[tool.flwr.app.config]`."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        "[build-system]", 'requires = ["hatchling"]', 'build-backend = "hatchling.build"', "",
        "[project]", 'name = "fedmeta-deploy"', 'version = "1.0.0"', "dependencies = []", "",
        "[tool.hatch.build.targets.wheel]", 'packages = ["."]', "",
        "[tool.flwr.app]", 'publisher = "fedmeta"', "",
        "[tool.flwr.app.components]",
        'serverapp = "fedmeta.deploy.serverapp:server_app"', 'clientapp = "fedmeta.deploy.clientapp:client_app"', "",
        "[tool.flwr.app.config]", *(f"{k} = {_toml(v)}" for k, v in run_config.items()),
    ]
    (folder / "pyproject.toml").write_text("\n".join(lines) + "\n")
    return folder


def write_connection(flwr_home: Path, address: str, tls: TLS | None) -> None:
    """`$FLWR_HOME/config.toml` with one superlink connection named `fedmeta`."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    security = "insecure = true" if tls is None else f"root-certificates = {_toml(str(tls.ca.resolve()))}"
    (flwr_home / "config.toml").write_text(
        f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\naddress = "{address}"\n{security}\n')


LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or `localhost`; any other name or address is remote."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host.lower() == "localhost"


def check_port(option: str, port: int) -> int:
    if not 1 <= port <= 65535:
        raise BadInput(option, port, "a TCP port, 1 to 65535")
    return port


def check_seconds(option: str, seconds: float) -> float:
    if not (seconds > 0 and math.isfinite(seconds)):
        raise BadInput(option, seconds, "a positive, finite number of seconds")
    return seconds


def check_app(ref: str) -> str:
    """`module:attribute` whose module can be imported here (not imported yet)."""
    import importlib.util

    module, _, attribute = ref.partition(":")
    try:
        found = bool(module and attribute.isidentifier()) and importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise BadInput("--app", ref, "module:attribute of an importable module naming a flwr ClientApp "
                                     "(e.g. fedmeta.deploy.clientapp:client_app)")
    return ref


def parse_address(option: str, address: str) -> tuple[str, int]:
    """`host:port` (an IPv6 host in brackets: `[::1]:9092`)."""
    match = re.fullmatch(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):([0-9]{1,5})", address.strip())
    if match is None or not 1 <= int(match[2]) <= 65535:
        raise BadInput(option, address, "host:port with a port from 1 to 65535 (e.g. 127.0.0.1:9092, server.example.org:9092)")
    return match[1], int(match[2])


def check_insecure_host(option: str, host: str, allow_remote: bool) -> None:
    """Without TLS everything (parameters, updates) crosses the network in the clear:
    only a loopback address, unless the user explicitly allows a remote one."""
    if not allow_remote and not is_loopback(host):
        raise BadInput(option, host, "a loopback address (127.0.0.1, ::1, localhost) with --insecure, "
                                     "or TLS certificates, or --allow-insecure-remote")


def superlink_command(port: int, tls: TLS | None = None, host: str | None = None, *, node_auth: bool = False,
                      database: Path | None = None) -> list[str]:
    """`host`: the address the superlink listens on; default 127.0.0.1 (loopback only), with
    or without TLS: supernodes on other machines need an address given on purpose.
    `node_auth`: only supernodes whose public keys were registered may connect (TLS only);
    `database`: the superlink's state (registered keys, runs) in a file that outlives it."""
    host = host or LOOPBACK
    cmd = [binary("flower-superlink"), "--disable-runtime-dependency-installation", "--host", host, "--port", str(port)]
    cmd += ["--database", str(database)] if database is not None else []
    if tls is None:
        if node_auth:
            raise BadInput("--enable-supernode-auth", True, "TLS certificates (Flower authenticates supernodes over TLS only)")
        return [*cmd, "--insecure"]
    if tls.cert is None or tls.key is None:
        raise BadInput("--ssl-certfile", None, "the superlink's certificate and key with its CA certificate")
    cmd += ["--enable-supernode-auth"] if node_auth else []
    return [*cmd, "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]


def supernode_command(superlink: str, port: int, node_config: dict[str, Any], tls: TLS | None = None, *,
                      auth_key: Path | None = None, poll: float = 0.5, app: str | None = None,
                      stock: bool = False) -> list[str]:
    """Flower's supernode with its ClientApp kept loaded (`supernode.py`): `port` is its
    local Runtime API (one per supernode on a machine); `auth_key`: its OpenSSH EC private
    key, whose public key the superlink has registered; `poll`: seconds between polls;
    `app`: the owner's own ClientApp (module:attribute) instead of fedmeta's. `stock`:
    Flower's `flower-supernode` as it is (a ClientApp process per message; benchmarks)."""
    config = " ".join(f"{k}={_toml(v)}" for k, v in node_config.items())
    ours = [sys.executable, "-m", "fedmeta.deploy.supernode", "--poll", str(poll), *(["--app", app] if app else []), "--"]
    cmd = [*([binary("flower-supernode")] if stock else ours), "--superlink", superlink, "--port", str(port),
           "--node-config", config]
    cmd += ["--auth-supernode-private-key", str(auth_key)] if auth_key is not None else []
    return [*cmd, "--insecure"] if tls is None else [*cmd, "--root-certificates", str(tls.ca)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


PR_SET_PDEATHSIG = 1  # linux/prctl.h
GUARD = Path(__file__).with_name("guard.py")


def _prctl() -> Any:
    """libc's prctl on Linux (looked up before any fork), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


def die_with_parent() -> Any:
    """A `preexec_fn` that makes the child die (SIGKILL) when the process that starts it dies,
    even by SIGKILL; None where prctl(PR_SET_PDEATHSIG) does not exist."""
    prctl, parent = _prctl(), os.getpid()
    if prctl is None:
        return None

    def preexec() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os.kill(os.getpid(), signal.SIGKILL)

    return preexec


def guarded(cmd: list[str]) -> list[str]:
    """`cmd` under `guard.py` on Linux: it and every process it starts (Flower's superexecs,
    ServerApp, ClientApps, whatever session they put themselves in) die with this process."""
    if _prctl() is None:
        return cmd
    return [sys.executable, "-I", str(GUARD), str(os.getpid()), "--", *cmd]


class Processes:
    """Child processes in their own sessions (process groups), logging to files, each tied
    to this process through `guard.py`: if this process dies, even by SIGKILL, they and all
    their descendants are killed. On exit every process group is terminated (SIGTERM), then
    whatever is left after 10 s is killed, whatever happened."""

    def __init__(self, logs: Path, env: dict[str, str]):
        self.logs, self.env, self.children = logs, env, []
        logs.mkdir(parents=True, exist_ok=True)

    def start(self, name: str, cmd: list[str]) -> subprocess.Popen:
        out = open(self.logs / f"{name}.log", "wb")  # noqa: SIM115  (closed with the process)
        proc = subprocess.Popen(guarded(cmd), stdout=out, stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                preexec_fn=die_with_parent())  # noqa: PLW1509  (async-signal-safe: prctl, getppid, kill)
        self.children.append((proc, out))
        return proc

    def __enter__(self) -> Processes:
        return self

    def __exit__(self, *exc: object) -> None:
        for proc, _ in self.children:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        stop = time.monotonic() + 10
        for proc, out in self.children:
            try:
                proc.wait(timeout=max(0.1, stop - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGUSR1)  # the guard kills every descendant
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait()
            out.close()


def _rounds(config: Path) -> int:
    import tomllib

    return int(tomllib.loads(config.read_text()).get("federated", {}).get("rounds", 0))


def wait_for_port(port: int, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    stop = time.monotonic() + timeout
    while time.monotonic() < stop:
        if proc.poll() is not None:
            args = list(proc.args)
            args = args[args.index("--") + 1:] if str(GUARD) in args else args
            name = args[2] if args[1:2] == ["-m"] else Path(args[0]).name  # `python -m module` or an executable
            raise FedmetaError(f"{name} exited with status {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise FedmetaError(f"nothing listens on 127.0.0.1:{port} after {timeout:.0f} s")


ERROR_FILE = "error-file"  # run config key: where the ServerApp writes why it failed (JSON)


def write_failure(path: Path, err: BaseException) -> None:
    """The ServerApp's failure, for the launcher to report as the CLI would in-process."""
    record: dict[str, Any] = {"error": type(err).__name__, "message": str(err)}
    if isinstance(err, BadInput):
        record.update(bad_input=True, field=err.field, accepted=err.accepted)
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_name(path.name + ".part")
    part.write_text(json.dumps(record, default=str) + "\n")
    part.replace(path)  # whole or absent for the launcher, which polls for it


def read_failure(path: Path, logs: Path) -> FedmetaError | None:
    """The error `write_failure` recorded, as the exception the CLI prints: bad input stays
    bad input (exit 2, the same line); anything else is a failure naming the ServerApp's
    error and the logs (exit 1)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if record.get("bad_input"):
        err = BadInput(str(record["field"]), None, str(record["accepted"]))
        err.args = (str(record["message"]),)  # the ServerApp's own line, value included
        return err
    return FedmetaError(f"the ServerApp failed: {record['error']}: {record['message']} (Flower logs in {logs})")


class MetricsTail:
    """The rows a run appends to its `metrics.jsonl`, each read once (a row still being
    written waits for its newline)."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def new_rows(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        complete = data[: data.rfind(b"\n") + 1]
        self.offset += len(complete)
        return [json.loads(line) for line in complete.splitlines() if line.strip()]


def progress_line(row: dict[str, Any], rounds: int) -> str:
    """One line per metrics row: `round 2/10  test  loss_after=0.41 acc_after=0.83`."""
    shown = ("loss_after", "acc_after", "epsilon") if row.get("split") != "round" else ("bytes_up", "epsilon")
    figures = " ".join(f"{k}={row[k]:.4g}" for k in shown if isinstance(row.get(k), (int, float)))
    return f"round {row.get('round')}/{rounds}  {row.get('split')}  {figures}".rstrip()


def run_local(config: Path, out: Path, clients: int, partitions: int, *, workdir: Path, deadline: float = 3600.0,
              timeout: float = 3600.0, tls: TLS | None = None, owner_files: list[Path] | None = None,
              logs: Path | None = None, progress: Callable[[str], None] | None = None,
              stock_supernodes: bool = False) -> Path:
    """A whole deployment on loopback: superlink (listening on 127.0.0.1 only), `clients`
    supernodes holding clients 0..clients−1 of the config's `partitions` (its
    federated.n_clients) — or, with `owner_files`, one supernode per file reading it as its
    owner's table —, `flwr run --stream`; returns the run folder once summary.json is
    there. Every Flower process dies with this one. If the ServerApp fails, its error is
    raised here (bad input as `BadInput`). Flower's logs go to `logs` (default
    `workdir/logs`); `progress` gets one line per metrics row as the run writes it. With
    `tls`, its certificate must name 127.0.0.1. `stock_supernodes`: Flower's own supernodes
    (a ClientApp process per message), to compare with."""
    nodes = ([{"partition-id": i, "num-partitions": partitions} for i in range(clients)] if owner_files is None
             else [{"data-file": str(f.resolve())} for f in owner_files])
    check_seconds("--deadline", deadline)
    check_seconds("timeout", timeout)
    port = free_port()
    env = {**os.environ, "FLWR_HOME": str(workdir / "flwr-home"), "PYTHONUNBUFFERED": "1", **PROMPT_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    write_connection(workdir / "flwr-home", f"{LOOPBACK}:{port}", tls)
    failure, logs = workdir / "serverapp-error.json", logs or workdir / "logs"
    rounds, tail = _rounds(config), MetricsTail(out / "metrics.jsonl")
    failure.unlink(missing_ok=True)
    app = write_app(workdir / "app", {"config": str(config.resolve()), "out": str(out.resolve()), "min-nodes": len(nodes),
                                      "wait": 300, "deadline": deadline, "resume": False, ERROR_FILE: str(failure)})
    with ExitStack() as stack:
        procs = stack.enter_context(Processes(logs, env))
        link = procs.start("superlink", superlink_command(port, tls, LOOPBACK))
        wait_for_port(port, link)
        for i, node in enumerate(nodes):
            procs.start(f"supernode-{i}", supernode_command(f"{LOOPBACK}:{port}", free_port(), node, tls, poll=LOCAL_POLL,
                                                            stock=stock_supernodes))
        runner = procs.start("flwr-run", [binary("flwr"), "run", str(app), CONNECTION, "--stream"])
        stop = time.monotonic() + timeout
        while runner.poll() is None and not failure.exists():  # a failed ServerApp may leave `flwr run` waiting
            if time.monotonic() > stop:
                raise FedmetaError(f"the deployment did not finish in {timeout:.0f} s; logs in {logs}")
            for row in tail.new_rows() if progress else ():
                progress(progress_line(row, rounds))
            time.sleep(0.5)
    for row in tail.new_rows() if progress else ():
        progress(progress_line(row, rounds))
    if (err := read_failure(failure, logs)) is not None:
        raise err
    if not (out / "summary.json").is_file():
        tail = (logs / "flwr-run.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise FedmetaError(f"the deployment ended without summary.json; logs in {logs}: " + " | ".join(tail))
    return out
