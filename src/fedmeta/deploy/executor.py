"""A supernode's ClientApp kept loaded for the whole run, in place of Flower's superexec.

Flower 1.42's superexec starts a new `flwr-clientapp` process for every message, which
imports torch, flwr and fedmeta and rebuilds the config's data before it can answer (about
5 s here). This executor does what that process does for one token (heartbeats, pull the
message and the node's context, run the app, push the reply and the context;
`flwr/supernode/runtime/run_clientapp.py`) for every task of every run, in one process
started with the supernode (`supernode.py`), asking the supernode's Runtime API for work
(on a `prompt.Backoff` up to `poll` s) with the supernode's SuperExec secret.

The app is the node's own: `fedmeta.deploy.clientapp:client_app` unless the owner names
another module (`--app`). Nothing the server ships in the run's FAB is installed or
imported; a FAB asking for a ClientApp other than fedmeta's or the owner's is refused with
an error reply, so a server cannot make a data owner's node run code of its choosing.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import select
import threading
import time
import tomllib
import zipfile
from pathlib import Path
from typing import Any

from fedmeta.deploy.prompt import Backoff

STOCK_APP = "fedmeta.deploy.clientapp:client_app"
log = logging.getLogger("fedmeta.executor")


def load_app(ref: str) -> Any:
    """`module:attribute` → the ClientApp it names (imported once, by the node)."""
    from flwr.clientapp import ClientApp

    from fedmeta.deploy.launch import check_app
    from fedmeta.errors import BadInput

    module, _, attribute = check_app(ref).partition(":")
    app = getattr(importlib.import_module(module), attribute, None)
    if not isinstance(app, ClientApp):
        raise BadInput("--app", ref, f"a flwr ClientApp (got {type(app).__name__})")
    return app


def fab_clientapp(content: bytes) -> str:
    """The ClientApp a FAB (a zip holding the app's pyproject.toml) asks for; read, never run."""
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as fab:
            project = tomllib.loads(fab.read("pyproject.toml").decode())
        return str(project["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (zipfile.BadZipFile, KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(f"the run's FAB names no ClientApp ({type(err).__name__}: {err})") from None


class TaskAbandoned(RuntimeError):
    """The supernode no longer counts the task as running (its message never fully arrived)."""


def pull_task(client: Any, backoff: float, abandoned: Any = lambda: False,
              max_time: float = 60.0) -> tuple[Any, Any, Any]:
    """The task's message, the node's context and the run's FAB from the Runtime API, as
    `flwr-clientapp` pulls them, except that an object not yet in the node's store is asked
    for again after `backoff` s (Flower waits 1 s, doubling): the supernode offers the task
    before the message's objects have all arrived from the superlink. Unlike a process per
    task, this one process must not wait for objects that will never come (the superlink
    restarted, the run ended): the pull stops once `abandoned()` or after `max_time` s."""
    from flwr.app import Message
    from flwr.common.serde import context_from_proto, fab_from_proto
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullAppMessagesRequest, PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_protobuf_utils import (
        make_confirm_message_received_fn_protobuf,
        make_pull_object_fn_protobuf,
    )
    from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
    from flwr.supercore.task_identity import TaskIdentity

    task = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task.task_id, task.run.run_id, task.context.node_id
    context = context_from_proto(task.context)
    pulled = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("the supernode offered a task without a message")
    tree, node = pulled.message_object_trees[0], Node(node_id=context.node_id)
    pull_object = make_pull_object_fn_protobuf(client.PullObject, node, context.run_id)

    def pull(object_id: str) -> bytes:
        if abandoned():
            raise TaskAbandoned(f"the supernode gave up task {task.task_id}")  # not retried: the pull stops
        return pull_object(object_id)

    message = pull_and_inflate_object_from_tree(
        tree, pull, make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=backoff, backoff_cap=max(backoff, 1.0), max_time=max_time)
    message.metadata.__dict__["_message_id"] = tree.object_id  # a deflated message does not carry its own id
    return message, context, fab_from_proto(task.fab)


class Abandoned:
    """The task's heartbeats; `lost` once the supernode no longer counts the task as running
    (Flower's own heartbeat raises SIGINT there, which would end this long-lived process)."""

    def __init__(self, client: Any):
        self.client, self.lost = client, False

    def __call__(self) -> bool:
        import httpx
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        try:
            res = self.client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
        except (httpx.TransportError, httpx.HTTPStatusError):
            return False
        self.lost = self.lost or not res.success
        return True


class Executor:
    """Runs the supernode's ClientApp tasks one after another in this process."""

    def __init__(self, runtime_api_address: str, app_ref: str = STOCK_APP, secret: bytes | None = None,
                 poll: float = 0.5):
        from flwr.supercore.interceptors import (
            RuntimeVersionHttpInterceptor,
            SuperExecAuthHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient

        self.address, self.app_ref, self.poll = runtime_api_address, app_ref, poll
        self.app = load_app(app_ref)
        self.accepted = {STOCK_APP, app_ref}
        interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
        if secret:
            interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret,
                                                             protected_methods=frozenset({"/flwr.proto.Runtime/AcquireTask"})))
        self.client = RuntimeHttpClient.from_server_address(server_address=runtime_api_address, insecure=True,
                                                            root_certificates=None, interceptors=interceptors,
                                                            retry_invoker=make_simple_http_retry_invoker())
        self.tasks = 0

    def acquire(self) -> str | None:
        """A ClientApp task's token, or None when the supernode has none."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        res = self.client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP]))
        return res.token if res.HasField("task") and res.token else None

    def serve(self, stop: threading.Event | None = None, wake: int | None = None) -> None:
        """Ask for work on a `Backoff` up to `poll` s, reset by each task, and at once when
        a byte comes down `wake` (a pipe the supernode writes to for each message it
        stores); run each task, until `stop` is set."""
        stop, backoff = stop or threading.Event(), Backoff(self.poll)
        while not stop.is_set():
            token = self.acquire()
            if token is not None:
                self.run_task(token)
                backoff.reset()
            elif wake is None:
                stop.wait(backoff())
            elif select.select([wake], [], [], backoff())[0] and not os.read(wake, 4096):
                wake = None  # the supernode closed the pipe: poll alone

    def run_task(self, token: str) -> None:
        """One token, as `flwr-clientapp` runs it: the reply (or an error reply) and the
        node's context go back to the supernode whatever the app does."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supercore.interceptors import (
            RuntimeTokenHttpInterceptor,
            RuntimeVersionHttpInterceptor,
        )
        from flwr.supercore.retry import make_simple_http_retry_invoker
        from flwr.supercore.runtime import RuntimeHttpClient
        from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

        client = RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=True, root_certificates=None,
            interceptors=[RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                          RuntimeTokenHttpInterceptor(token)],
            retry_invoker=make_simple_http_retry_invoker())
        beat = Abandoned(client)
        heartbeat = HeartbeatSender(beat)
        heartbeat.start()
        message = context = reply = None
        status, details = SubStatus.FAILED, "ClientApp task failed"
        started = time.perf_counter()
        try:
            message, context, fab = pull_task(client, Backoff.LOW, lambda: beat.lost)
            asked = fab_clientapp(fab.content)
            if asked not in self.accepted:
                raise PermissionError(f"this supernode runs {self.app_ref}; the run's FAB asks for {asked}")
            reply = self.app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except Exception as err:  # noqa: BLE001  (the error goes back to the server as Flower's would)
            log.error("ClientApp raised an exception", exc_info=err)
            details = f"{type(err)}:<'{err}'>"
            if message is not None:
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=details), reply_to=message)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            try:
                if reply is not None and context is not None and not beat.lost:
                    push_message(client, reply, context)
                push_task_output(client, context, status, details)
            except Exception as err:  # noqa: BLE001  (the supernode expires the task; this process goes on)
                log.error("could not push the task's reply", exc_info=err)
            client.close()
        self.tasks += 1
        log.info("task %d: %s %s in %.3f s", self.tasks, message and message.metadata.message_type, status,
                 time.perf_counter() - started)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedmeta.deploy.executor", description=__doc__.splitlines()[0])
    parser.add_argument("--runtime-api-address", required=True, help="The supernode's Runtime API (host:port).")
    parser.add_argument("--app", default=STOCK_APP, help="The node's ClientApp, module:attribute.")
    parser.add_argument("--secret-file", type=Path, help="The SuperExec secret the supernode was given.")
    parser.add_argument("--poll", type=float, default=0.5, help="The longest wait between requests for work (s).")
    parser.add_argument("--parent-pid", type=int, help="Exit when this process (the supernode) is gone.")
    parser.add_argument("--wake-fd", type=int, help="A pipe the supernode writes a byte to for each message.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s executor %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per poll
    if args.parent_pid is not None:
        from flwr.supercore.app_utils import start_parent_process_monitor

        start_parent_process_monitor(args.parent_pid)
    secret = args.secret_file.read_bytes() if args.secret_file else None
    try:
        Executor(args.runtime_api_address, args.app, secret, args.poll).serve(wake=args.wake_fd)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
