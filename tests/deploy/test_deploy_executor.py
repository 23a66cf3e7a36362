"""A supernode runs its own ClientApp, loaded once (`deploy/executor.py`, `deploy/supernode.py`):
a run whose FAB asks for another ClientApp gets an error reply and the node never imports
what the FAB ships; no other process on the machine can take the node's tasks from its
Runtime API without the node's SuperExec secret; a supernode whose executor dies stops
instead of taking tasks it would never answer. Real Flower processes on loopback."""

import io
import json
import os
import signal
import sys
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from fedmeta.deploy.executor import STOCK_APP, fab_clientapp
from fedmeta.deploy.launch import (
    CONNECTION,
    LOOPBACK,
    Processes,
    binary,
    free_port,
    superlink_command,
    supernode_command,
    wait_for_port,
    write_app,
    write_connection,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the executor in /proc")


def fab(pyproject: str) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as z:
        z.writestr("pyproject.toml", pyproject)
    return out.getvalue()


def test_the_fabs_clientapp_is_read_from_its_pyproject():
    app = f'[tool.flwr.app.components]\nserverapp = "x:y"\nclientapp = "{STOCK_APP}"\n'
    assert fab_clientapp(fab(app)) == STOCK_APP
    for bad in (b"not a zip", fab("[tool.flwr.app]\n"), fab("clientapp = \n")):
        with pytest.raises(ValueError, match="names no ClientApp"):
            fab_clientapp(bad)


PROBE = '''
import json
import time
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context) -> None:
    stop = time.monotonic() + 60
    while len(nodes := list(grid.get_node_ids())) < 2 and time.monotonic() < stop:
        time.sleep(0.2)
    replies = grid.send_and_receive([Message(RecordDict(), dst_node_id=n, message_type="query") for n in nodes],
                                    timeout=60)
    out = [r.error.reason if r.has_error() else r.content["who"]["app"] for r in replies]
    open(context.run_config["out"], "w").write(json.dumps(out))
'''
APP = '''{preamble}
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.query()
def query(msg, context):
    return Message(RecordDict({{"who": ConfigRecord({{"app": {who!r}}})}}), reply_to=msg)
'''


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def executor_of(node_pid: int) -> int:
    """The executor process under a supernode (under its guard.py)."""
    stop = time.monotonic() + 30
    while time.monotonic() < stop:
        for pid in [node_pid, *children(node_pid)]:
            for child in children(pid):
                if b"fedmeta.deploy.executor" in Path(f"/proc/{child}/cmdline").read_bytes():
                    return child
        time.sleep(0.2)
    pytest.fail("no executor under the supernode after 30 s")


def test_a_node_runs_only_its_own_clientapp_and_guards_its_tasks(tmp_path):
    """The run's FAB asks for `mine:app` and ships a `mine.py` that would leave a marker if
    imported. A node running fedmeta's ClientApp refuses the task; a node whose owner runs
    its own `mine:app` (`--app`) answers with its own module, not the FAB's."""
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.constant import TaskType
    from flwr.supercore.runtime import RuntimeHttpClient

    marker, out, own = tmp_path / "imported", tmp_path / "replies.json", tmp_path / "owner"
    app = write_app(tmp_path / "app", {"out": str(out)})
    project = (app / "pyproject.toml").read_text().replace(STOCK_APP, "mine:app")
    (app / "pyproject.toml").write_text(project.replace("fedmeta.deploy.serverapp:server_app", "probe:app"))
    (app / "probe.py").write_text(PROBE)
    (app / "mine.py").write_text(APP.format(preamble=f"open({str(marker)!r}, 'w').write('imported')", who="the server's"))
    own.mkdir()
    (own / "mine.py").write_text(APP.format(preamble="", who="the owner's"))
    port, runtimes = free_port(), [free_port(), free_port()]
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])  # Flower's superexec
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr-home"), "PATH": path, "PYTHONPATH": str(own)}
    write_connection(tmp_path / "flwr-home", f"{LOOPBACK}:{port}", None)
    with Processes(tmp_path / "logs", env) as procs:
        link = procs.start("superlink", superlink_command(port))
        wait_for_port(port, link)
        stock = procs.start("stock", supernode_command(f"{LOOPBACK}:{port}", runtimes[0], {}, poll=0.05))
        procs.start("owner", supernode_command(f"{LOOPBACK}:{port}", runtimes[1], {}, poll=0.05, app="mine:app"))
        for runtime in runtimes:
            wait_for_port(runtime, stock)
        outsider = RuntimeHttpClient.from_server_address(server_address=f"{LOOPBACK}:{runtimes[0]}", insecure=True,
                                                         root_certificates=None, interceptors=[])
        with pytest.raises(httpx.HTTPStatusError) as refused:  # no SuperExec secret: no task
            outsider.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        assert refused.value.response.status_code in (401, 403)
        runner = procs.start("flwr-run", [binary("flwr"), "run", str(app), CONNECTION, "--stream"])
        stop = time.monotonic() + 120
        while not out.exists() and runner.poll() is None and time.monotonic() < stop:
            time.sleep(0.2)
        replies = json.loads(out.read_text())
        assert len(replies) == 2 and "the owner's" in replies
        refusal = next(r for r in replies if r != "the owner's")
        assert f"this supernode runs {STOCK_APP}; the run's FAB asks for mine:app" in refusal
        assert not marker.exists()  # the FAB's module was never imported on either node

        os.kill(executor_of(stock.pid), signal.SIGKILL)
        stock.wait(timeout=30)  # the supernode stops with its executor
    log = (tmp_path / "logs" / "stock.log").read_text()
    assert "the ClientApp executor exited with status -9" in log
