"""`fedmeta deploy local|app|superlink|supernode`: a config on Flower's deployment runtime."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from fedmeta.errors import BadInput

deploy = typer.Typer(help="Run a federated config as a Flower server and real clients.", no_args_is_help=True)

Sets = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: a.b=v.")]
Insecure = Annotated[bool, typer.Option(help="No TLS (loopback and tests only).")]
Show = Annotated[bool, typer.Option("--print", help="Print the command instead of running it.")]
AllowRemote = Annotated[bool, typer.Option(
    help="Allow --insecure (no TLS) with a non-loopback address: updates cross the network in the clear.")]


def _config(config: Path | None, set_: list[str] | None, data_dir: str | None, schema: bool = False):
    """The deployable config; with `schema`, a table's schema written out for its owners."""
    from fedmeta.config import load_config
    from fedmeta.data.table import resolve_schema
    from fedmeta.deploy.messages import check_deployable

    cfg = load_config(config, list(set_ or []) + ([f"data.data_dir={data_dir!r}"] if data_dir else []))
    check_deployable(cfg)
    return resolve_schema(cfg) if schema else cfg


def _tls(insecure: bool, ca: Path | None, cert: Path | None = None, key: Path | None = None):
    from fedmeta.deploy.launch import TLS

    if insecure == (ca is not None):
        raise BadInput("--insecure", insecure, "either --insecure or a CA certificate (--ssl-ca-certfile / --root-certificates)")
    for name, path in (("--ssl-ca-certfile", ca), ("--ssl-certfile", cert), ("--ssl-keyfile", key)):
        if path is not None and not path.is_file():
            raise BadInput(name, str(path), "an existing PEM file")
    return None if insecure else TLS(ca, cert, key)


def _run(cmd: list[str], show: bool, env: dict[str, str] | None = None) -> None:
    """Run the command with `env` added to the environment, or print it."""
    env = env or {}
    if show:
        print(shlex.join([*(f"{k}={v}" for k, v in env.items()), *cmd]))
        return
    code = subprocess.call(cmd, env={**os.environ, **env})
    if code:  # Flower's own status (128 + N when signal N ended it); a typer.Exit would be lost
        raise SystemExit(code if code > 0 else 128 - code)


@deploy.command()
def local(
    config: Annotated[Path | None, typer.Argument(help="Run config (TOML); none = built-in demo.")] = None,
    clients: Annotated[int | None, typer.Option(help="Supernodes to start (default federated.n_clients).")] = None,
    set_: Sets = None,
    out: Annotated[Path | None, typer.Option(help="Run folder (default runs/<name>-<time>).")] = None,
    data_dir: Annotated[str | None, typer.Option(help="Datasets folder (else $FEDMETA_DATA).")] = None,
    deadline: Annotated[float, typer.Option(help="Seconds a round waits for replies.")] = 3600.0,
    data: Annotated[list[Path] | None, typer.Option(
        "--data", help="An owner's own table (repeatable): one supernode per file, the server holds no rows.")] = None,
) -> None:
    """Loopback federation: a superlink on 127.0.0.1, N supernodes and `flwr run`, torn down
    at the end (and killed with this process). With --data, a table config runs as it
    would across owners: each supernode reads one owner's file, the server only the schema."""
    from fedmeta.deploy.launch import check_seconds, run_local
    from fedmeta.rundir import RunDir

    check_seconds("--deadline", deadline)
    if clients is not None and clients < 1:  # the upper bound needs the config
        raise BadInput("--clients", clients, "1 to federated.n_clients")
    cfg = _config(config, set_, data_dir, schema=data is None)
    n = cfg.federated.n_clients
    if data:
        if clients is not None:
            raise BadInput("--clients", clients, "unset with --data (one supernode per owner's file)")
        cfg, clients = _owners_config(cfg, data), len(data)
    clients = n if clients is None else clients
    if data is None and not 1 <= clients <= n:
        raise BadInput("--clients", clients, f"1 to federated.n_clients = {n}")
    created = RunDir.create(out, cfg)  # refuses an existing run before anything starts
    folder = created.path
    created.close()  # the ServerApp process takes the writer's lock
    work = Path(tempfile.mkdtemp(prefix="fedmeta-deploy-"))
    logs = folder / "flower-logs"
    print(f"run folder: {folder}; Flower logs: {logs}", file=sys.stderr)
    try:
        run_local(folder / "config.toml", folder, clients, n, workdir=work, deadline=deadline, owner_files=data,
                  logs=logs, progress=lambda line: print(line, file=sys.stderr, flush=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    final = json.loads((folder / "summary.json").read_text())["final"]
    figures = ", ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float))
    print(f"done: {figures}; report: {folder / 'report.html'}")


def _owners_config(cfg, files: list[Path]):
    """The server's config for owners who each hold one of `files`: the schema (from the
    config, else read from the files) and no data.path."""
    from fedmeta.data.table import resolve_schema

    if cfg.data.name != "table":
        raise BadInput("--data", str(files[0]), "a table config (data.name = 'table') to read owners' files")
    for path in files:
        if not path.is_file():
            raise BadInput("--data", str(path), "an existing .csv or .parquet file (an owner's rows)")
    if cfg.data.clients is None or cfg.data.columns is None:
        read = cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": [str(f) for f in files], "source": None})})
        cfg = resolve_schema(read)
    owners = len(cfg.data.clients)
    if len(files) != owners:
        raise BadInput("--data", f"{len(files)} files", f"one per owner of data.clients ({owners})")
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"path": None, "source": None})})


@deploy.command()
def app(
    config: Annotated[Path | None, typer.Argument(help="Run config (TOML); none = built-in demo.")] = None,
    out: Annotated[Path, typer.Option(help="Run folder on the superlink's machine.")] = Path("runs/deploy"),
    app_dir: Annotated[Path, typer.Option("--dir", help="Where to write the Flower app.")] = Path("fedmeta-app"),
    set_: Sets = None,
    min_nodes: Annotated[int | None, typer.Option(help="Supernodes to wait for (default federated.n_clients).")] = None,
    wait: Annotated[float, typer.Option(help="Seconds to wait for them.")] = 300.0,
    deadline: Annotated[float, typer.Option(help="Seconds a round waits for replies.")] = 3600.0,
) -> None:
    """Write the Flower app folder (resolved config inside) for `flwr run DIR fedmeta`."""
    from fedmeta.deploy.launch import check_seconds, write_app

    check_seconds("--wait", wait)
    check_seconds("--deadline", deadline)
    for option, path in (("--dir", app_dir), ("--out", out)):
        if path.exists() and not path.is_dir():
            raise BadInput(option, str(path), "a folder, or a path where one can be created (this is a file)")
    if min_nodes is not None and min_nodes < 1:  # the upper bound needs the config
        raise BadInput("--min-nodes", min_nodes, "1 to federated.n_clients")
    cfg = _config(config, set_, None, schema=True)
    n = cfg.federated.n_clients
    if min_nodes is not None and not 1 <= min_nodes <= n:
        raise BadInput("--min-nodes", min_nodes, f"1 to federated.n_clients = {n}")
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "config.toml").write_text(cfg.to_toml())
    write_app(app_dir, {"config": str((app_dir / "config.toml").resolve()), "out": str(out.resolve()),
                        "min-nodes": min_nodes or n, "wait": wait, "deadline": deadline, "resume": False})
    print(f"flwr run {app_dir} <connection> --stream   (clients: num-partitions = {cfg.federated.n_clients})")


@deploy.command()
def superlink(
    port: Annotated[int, typer.Option(help="HTTP port for supernodes and `flwr run`.")] = 9092,
    host: Annotated[str | None, typer.Option(
        help="Address to listen on (default 127.0.0.1; all interfaces only with TLS, for other machines).")] = None,
    insecure: Insecure = False,
    allow_insecure_remote: AllowRemote = False,
    ssl_ca_certfile: Annotated[Path | None, typer.Option(help="CA certificate (PEM).")] = None,
    ssl_certfile: Annotated[Path | None, typer.Option(help="Superlink certificate (PEM).")] = None,
    ssl_keyfile: Annotated[Path | None, typer.Option(help="Superlink private key (PEM).")] = None,
    enable_supernode_auth: Annotated[bool, typer.Option(
        "--enable-supernode-auth", help="Admit only supernodes whose public keys were registered "
                                        "(flwr supernode register KEY.pub); TLS only.")] = False,
    database: Annotated[Path | None, typer.Option(
        help="Keep the superlink's state (registered keys, runs) in this SQLite file, across restarts.")] = None,
    show: Show = False,
) -> None:
    """Start Flower's superlink (the server side), with TLS unless --insecure."""
    from fedmeta.deploy.launch import PROMPT_ENV, check_insecure_host, check_port, superlink_command

    check_port("--port", port)
    if host is not None and not host.strip():
        raise BadInput("--host", host, "an address to listen on (e.g. 127.0.0.1, ::1 or this machine's address)")
    if database is not None and (database.is_dir() or not database.parent.is_dir()):
        raise BadInput("--database", str(database), "a file in an existing folder (created if absent)")
    tls = _tls(insecure, ssl_ca_certfile, ssl_certfile, ssl_keyfile)
    if tls is None and host is not None:
        check_insecure_host("--host", host, allow_insecure_remote)
    _run(superlink_command(port, tls, host, node_auth=enable_supernode_auth, database=database), show,
         PROMPT_ENV)  # its superexec, which starts the ServerApp, polling promptly


@deploy.command()
def supernode(
    superlink: Annotated[str, typer.Option(help="Superlink address host:port.")],
    partition_id: Annotated[int | None, typer.Option(help="Which client of the config's federation this is.")] = None,
    num_partitions: Annotated[int | None, typer.Option(help="federated.n_clients of the config.")] = None,
    data: Annotated[Path | None, typer.Option(
        "--data", help="This owner's own table (CSV or Parquet): its one client, read against the run's schema.")] = None,
    owner: Annotated[str | None, typer.Option(help="This owner's name in data.clients (when --data has no client column).")] = None,
    port: Annotated[int, typer.Option(help="Local ClientApp API port (one per supernode).")] = 9094,
    data_dir: Annotated[str | None, typer.Option(help="This owner's datasets folder.")] = None,
    key: Annotated[Path | None, typer.Option(help="This client's Ed25519 signing key (PEM).")] = None,
    config: Annotated[Path | None, typer.Option(help="Refuse any server config but this one (TOML).")] = None,
    state_dir: Annotated[Path | None, typer.Option(
        help="Keep this client's state (a top-k residual) here, so a resumed run resumes it.")] = None,
    insecure: Insecure = False,
    allow_insecure_remote: AllowRemote = False,
    root_certificates: Annotated[Path | None, typer.Option(help="CA certificate of the superlink (PEM).")] = None,
    auth_supernode_private_key: Annotated[Path | None, typer.Option(
        help="This supernode's OpenSSH EC private key (ssh-keygen -t ecdsa), its public key registered with "
             "the superlink.")] = None,
    app: Annotated[str | None, typer.Option(
        help="This owner's own ClientApp, module:attribute (e.g. fedmeta.deploy.clientapp.make_client_app(...) "
             "in a module of yours); the only one this node runs.")] = None,
    poll: Annotated[float, typer.Option(
        help="Seconds between this node's polls of the superlink for work.")] = 0.5,
    show: Show = False,
) -> None:
    """Start a Flower supernode that acts as one client of the federation: a partition of
    the config's dataset (--partition-id), or an owner's own table (--data). Its ClientApp
    (fedmeta's, or --app) stays loaded for the whole run; nothing the server ships is run."""
    from fedmeta.deploy.launch import (
        check_app,
        check_insecure_host,
        check_port,
        check_seconds,
        parse_address,
        supernode_command,
    )

    host, _ = parse_address("--superlink", superlink)
    check_port("--port", port)
    check_seconds("--poll", poll)
    if app is not None:
        check_app(app)
    node: dict[str, object] = {}
    if data is None:
        _check_partition(partition_id, num_partitions)
        node.update({"partition-id": partition_id, "num-partitions": num_partitions})
    else:
        if partition_id is not None or num_partitions is not None:
            raise BadInput("--partition-id", partition_id, "unset with --data (the owner's place comes from the run's schema)")
        if not data.is_file() or data.suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise BadInput("--data", str(data), "an existing .csv or .parquet file (this owner's rows)")
    if owner is not None and (data is None or not owner.strip()):
        raise BadInput("--owner", owner, "a name of data.clients, with --data")
    tls = _tls(insecure, root_certificates)
    if tls is None:
        check_insecure_host("--superlink", host, allow_insecure_remote)
    if key is not None and not key.is_file():
        raise BadInput("--key", str(key), "an existing PEM file (fedmeta keys create)")
    if auth_supernode_private_key is not None:
        _check_auth_key(auth_supernode_private_key)
    if data_dir is not None and not Path(data_dir).is_dir():
        raise BadInput("--data-dir", data_dir, "an existing folder (this owner's datasets)")
    if state_dir is not None and not state_dir.is_dir():
        raise BadInput("--state-dir", str(state_dir), "an existing folder (this client's own, kept between runs)")
    if config is not None:
        _config(config, None, None)  # a pinned config must itself be valid and deployable
    pinned = config and config.resolve()
    node.update({k: str(v) for k, v in (("data-dir", data_dir), ("key", key and key.resolve()), ("config", pinned),
                                        ("data-file", data and data.resolve()), ("owner", owner),
                                        ("state-dir", state_dir and state_dir.resolve())) if v})
    _run(supernode_command(superlink, port, node, tls, auth_key=auth_supernode_private_key, poll=poll, app=app), show)


def _check_auth_key(path: Path) -> None:
    """Flower reads a supernode's key as an unencrypted OpenSSH EC private key."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    try:
        key = load_ssh_private_key(path.read_bytes(), None)
    except (OSError, ValueError, TypeError, UnsupportedAlgorithm):
        key = None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise BadInput("--auth-supernode-private-key", str(path),
                       "an unencrypted OpenSSH EC private key (ssh-keygen -t ecdsa -b 384 -N '' -f FILE)")


def _check_partition(partition_id: int | None, num_partitions: int | None) -> None:
    if num_partitions is None or partition_id is None:
        raise BadInput("--partition-id" if partition_id is None else "--num-partitions", None,
                       "--partition-id and --num-partitions (which client of the federation this is), or --data FILE")
    if num_partitions < 1:
        raise BadInput("--num-partitions", num_partitions, "a positive number of clients (federated.n_clients)")
    if not 0 <= partition_id < num_partitions:
        raise BadInput("--partition-id", partition_id, f"0 to --num-partitions - 1 = {num_partitions - 1}")


def register(app_: typer.Typer) -> None:
    app_.add_typer(deploy, name="deploy")
