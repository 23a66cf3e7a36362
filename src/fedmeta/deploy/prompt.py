"""Flower 1.42's fixed waits, made prompt. Each exchange of a deployed round waited on
several of them, which made a round of seconds out of milliseconds of work:

- the server's `Grid.send_and_receive` pulls replies every 3 s (`flwr/superlink/grid/http_grid.py`):
  `PromptGrid` pulls every 0.05 s with the grid's own push and pull;
- an idle supernode asks the superlink for work every 3 s and waits for each reply in
  0.5 s steps (`flwr/supernode/start_client_internal.py`): `prompt_supernode` caps both;
- a message's objects not yet where they are pulled from (a supernode offers a task, and
  the superlink a reply, before all its objects have arrived) are asked for again after
  1 s, doubling (`pull_objects` in `flwr/supercore/inflatable/inflatable_utils.py`):
  `prompt_pulls` starts that backoff at the poll interval, for the supernode's pulls and
  the grid's; the executor's pulls pass it themselves (`executor.pull_task`).

Each patch applies to the one Flower module that names the wait, in the process that
runs it, and only where that module is as read (flwr 1.42); elsewhere Flower keeps its own.
"""

from __future__ import annotations

import functools
import time
from types import ModuleType
from typing import Any

from flwr.app import Message
from flwr.serverapp import Grid


class PromptGrid:
    """A Flower `Grid` whose `send_and_receive` collects replies as they arrive: it pulls
    every `interval` seconds, where Flower 1.42's own sleeps 3 s between pulls
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
        while waiting:
            replies = list(self.grid.pull_messages(waiting))
            received += replies
            waiting.difference_update(m.metadata.reply_to_message_id for m in replies)
            if not waiting or (end is not None and time.monotonic() >= end):
                break
            time.sleep(self.interval)
        return received


class CappedSleep:
    """The `time` module as one module sees it, with `sleep` capped at `cap` seconds."""

    def __init__(self, cap: float):
        self.cap = cap

    def sleep(self, seconds: float) -> None:
        time.sleep(min(seconds, self.cap))

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


def prompt_supernode(poll: float) -> bool:
    """Flower's supernode loop with its sleeps capped at `poll` and its pulls prompt; False
    where the loop is not as read (another Flower), which then keeps Flower's own waits."""
    import flwr.supernode.start_client_internal as loop

    if getattr(loop, "time", None) is not time or not prompt_pulls(loop, poll):
        return False
    loop.time = CappedSleep(poll)
    return True


def prompt_grid(grid: Grid, interval: float = 0.05) -> PromptGrid:
    """The ServerApp's grid, pulling replies and their objects every `interval` s."""
    import flwr.superlink.grid.http_grid as http_grid

    prompt_pulls(http_grid, interval)
    return PromptGrid(grid, interval)
