"""The server's side of a deployment: a Flower `ServerApp` that runs the in-process runtime
with the Flower transport (`transport.py`) and writes the same run folder as `fedmeta run`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from fedmeta.config import load_config
from fedmeta.data.table import resolve_schema
from fedmeta.deploy.prompt import prompt_grid
from fedmeta.deploy.transport import FlowerTransport
from fedmeta.errors import ConfigError
from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import Runtime

server_app = ServerApp()


@server_app.main()
def server_main(grid: Grid, context: Context) -> None:
    """Run config keys: `config` (resolved TOML path), `out` (run folder), `min-nodes`,
    `wait` (s to wait for supernodes), `deadline` (s per round), `resume` (bool)."""
    from fedmeta.deploy.launch import ERROR_FILE, write_failure

    rc = context.run_config
    try:
        serve(grid, rc)
    except Exception as err:  # the launcher (`fedmeta deploy local`) prints it; Flower's log has the traceback
        if str(rc.get(ERROR_FILE, "")):
            write_failure(Path(str(rc[ERROR_FILE])), err)
        raise


def serve(grid: Grid, rc: Any) -> None:
    """The ServerApp's work, from its run config (`server_main`)."""
    from fedmeta.deploy.launch import check_seconds
    from fedmeta.report import write_report
    from fedmeta.rundir import RunDir

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's per-order RDP notes
    out, config = Path(str(rc["out"])), Path(str(rc["config"]))
    resume = bool(rc.get("resume", False))
    wait = check_seconds("wait", float(rc.get("wait", 300)))
    deadline = check_seconds("deadline", float(rc.get("deadline", 3600)))
    if resume or (out / "config.toml").resolve() == config.resolve():  # resumed, or made by the launcher
        run, cfg = RunDir.open(out, lock=True)  # the one writer while the launcher waits
    else:
        cfg = resolve_schema(load_config(config))
        run = RunDir.create(out, cfg)
    min_nodes, n = int(rc.get("min-nodes", cfg.federated.min_clients)), cfg.federated.n_clients
    most = len(cfg.data.clients) if cfg.data.clients else n  # a table's held-out owners have supernodes too
    if not 1 <= min_nodes <= most:
        raise ConfigError("min-nodes", min_nodes, f"1 to {most} (the supernodes the run can have)")
    runtime = Runtime(cfg, lambda rt: FlowerTransport(rt.cfg, prompt_grid(grid), min_nodes=min_nodes, wait=wait,
                                                      deadline=deadline, data=rt.data))
    run_federated(cfg, run, resume=resume, show_progress=False, runtime=runtime)
    write_report(run.path)
