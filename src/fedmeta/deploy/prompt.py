"""Flower 1.42's fixed waits, made prompt. Each exchange of a deployed round waited on
several of them, which made a round of seconds out of milliseconds of work:

- the server's `Grid.send_and_receive` pulls replies every 3 s (`flwr/superlink/grid/http_grid.py`):
  `PromptGrid` pulls with the grid's own push and pull, on a `Backoff`;
- an idle supernode asks the superlink for work every 3 s and waits for each reply in
  0.5 s steps (`flwr/supernode/start_client_internal.py`): `prompt_supernode` polls the
  superlink on a `Backoff` and waits on its own state in `Backoff.LOW` steps;
- a message's objects not yet where they are pulled from (a supernode offers a task, and
  the superlink a reply, before all its objects have arrived) are asked for again after
  1 s, doubling (`pull_objects` in `flwr/supercore/inflatable/inflatable_utils.py`):
  `prompt_pulls` starts that backoff at the poll interval, for the supernode's pulls and
  the grid's; the executor's pulls pass it themselves (`executor.pull_task`).

Polling is not free: each poll is an HTTP request that costs both ends about 2 ms of CPU
in Flower's Python stack, so a federation of three supernodes polling every 0.02 s kept
1.2 of this machine's 2 cores busy while idle. A `Backoff` polls fast only after work
(the exchanges of a round follow each other closely) and slows down, doubling, to its
ceiling while nothing comes.

Each patch applies to the one Flower module that names the wait, in the process that
runs it, and only where that module is as read (flwr 1.42); elsewhere Flower keeps its own.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid


class Backoff:
    """Seconds to wait before the next poll: `LOW` right after work (`reset`), doubling
    while nothing comes, at most `high`. Work that comes t s after the last is seen within
    about t s (and `high`), and an idle poller costs one request per `high` s."""

    LOW = 0.02

    def __init__(self, high: float):
        self.high, self.wait = high, min(self.LOW, high)

    def __call__(self) -> float:
        wait, self.wait = self.wait, min(2 * self.wait, self.high)
        return wait

    def reset(self) -> None:
        self.wait = min(self.LOW, self.high)


class PromptGrid:
    """A Flower `Grid` whose `send_and_receive` collects replies as they arrive: it pulls
    on a `Backoff` up to `interval` s, where Flower 1.42's own sleeps 3 s between pulls
    (`flwr/superlink/grid/http_grid.py`), which rounded every exchange up to 3 s. The rest
    is the grid's own."""

    def __init__(self, grid: Grid, interval: float = 0.05):
        self.grid, self.interval = grid, interval

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)

    def send_and_receive(self, messages: list[Message], *, timeout: float | None = None) -> list[Message]:
        """Push `messages`, then pull their replies until all came or `timeout` s passed."""
        waiting = set(self.grid.push_messages(messages))
        end = None if timeout is None else time.monotonic() + timeout
        received: list[Message] = []
        backoff = Backoff(self.interval)
        while waiting:
            replies = list(self.grid.pull_messages(waiting))
            received += replies
            waiting.difference_update(m.metadata.reply_to_message_id for m in replies)
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            if replies:
                backoff.reset()
            time.sleep(backoff())
        return received


class SupernodeClock:
    """The `time` module as Flower's supernode loop sees it: its idle sleep between polls
    of the superlink (3 s, the only one of a second or more) waits on `backoff`; its waits
    on its own state (a reply, an object in its store: 0.5 s) wait `Backoff.LOW`."""

    def __init__(self, backoff: Backoff):
        self.backoff = backoff

    def sleep(self, seconds: float) -> None:
        time.sleep(self.backoff() if seconds >= 1 else min(seconds, Backoff.LOW))

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)


def prompt_pulls(module: ModuleType, backoff: float) -> bool:
    """`module`'s `pull_objects` retrying an unavailable object after `backoff` s at first
    (then doubling, up to 1 s); False where the module has no `pull_objects`."""
    pull = getattr(module, "pull_objects", None)
    if not callable(pull):
        return False
    if not isinstance(pull, functools.partial):  # once per process
        module.pull_objects = functools.partial(pull, initial_backoff=backoff, backoff_cap=max(backoff, 1.0))
    return True


def prompt_supernode(poll: float, on_message: Callable[[], None] = lambda: None) -> bool:
    """Flower's supernode loop polling the superlink on a `Backoff` up to `poll` s, reset
    by every message it receives (after which it calls `on_message`), and its pulls
    prompt; False where the loop is not as read (another Flower), which then keeps
    Flower's own waits."""
    import flwr.supernode.start_client_internal as loop

    receive = getattr(loop, "_pull_and_store_message", None)
    if getattr(loop, "time", None) is not time or not callable(receive) or not prompt_pulls(loop, Backoff.LOW):
        return False
    backoff = Backoff(poll)

    @functools.wraps(receive)
    def received(*args: Any, **kwargs: Any) -> Any:
        run_id = receive(*args, **kwargs)
        if run_id is not None:  # a message: the next is likely soon
            backoff.reset()
            on_message()
        return run_id

    loop.time, loop._pull_and_store_message = SupernodeClock(backoff), received
    return True


def prompt_grid(grid: Grid, interval: float = 0.05) -> PromptGrid:
    """The ServerApp's grid, pulling replies on a `Backoff` up to `interval` s, and their
    objects from `Backoff.LOW`."""
    import flwr.superlink.grid.http_grid as http_grid

    prompt_pulls(http_grid, Backoff.LOW)
    return PromptGrid(grid, interval)
