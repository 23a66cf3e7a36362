"""Flower's fixed waits made prompt (`deploy/prompt.py`). `PromptGrid`: Flower's push and
pull, with replies collected as they arrive (Flower's own `send_and_receive` sleeps 3 s
between pulls): every reply comes back, soon after it arrives; a message nobody answers
ends the wait at the timeout; other calls reach the grid. `Backoff`: fast after work,
doubling to its ceiling. The supernode's loop: its idle poll on the backoff, reset by each
message it receives (which wakes the executor); its waits on its own state short; its
object pulls prompt."""

import functools
import time
from types import SimpleNamespace

from fedmeta.deploy.prompt import Backoff, PromptGrid, SupernodeClock, prompt_supernode


class SlowGrid:
    """Each message's reply appears `after` seconds after the push; `never` are not answered."""

    def __init__(self, after: float, never: set[str] = frozenset()):
        self.after, self.never, self.pulls = after, never, 0

    def push_messages(self, messages):
        self.pushed = time.monotonic()
        return [m for m in messages]

    def pull_messages(self, ids):
        self.pulls += 1
        if time.monotonic() - self.pushed < self.after:
            return []
        return [SimpleNamespace(metadata=SimpleNamespace(reply_to_message_id=i)) for i in ids if i not in self.never]

    def get_node_ids(self):
        return [7]


def test_replies_come_back_as_they_arrive():
    grid = PromptGrid(SlowGrid(after=0.3))
    start = time.monotonic()
    replies = grid.send_and_receive(["a", "b"], timeout=60)
    took = time.monotonic() - start
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert 0.3 <= took < 2.0 and grid.grid.pulls > 2  # Flower's loop sleeps 3 s after its first pull
    assert grid.get_node_ids() == [7]


def test_an_unanswered_message_ends_the_wait_at_the_timeout():
    grid = PromptGrid(SlowGrid(after=0.0, never={"b"}))
    start = time.monotonic()
    replies = grid.send_and_receive(["a", "b"], timeout=0.4)
    assert [r.metadata.reply_to_message_id for r in replies] == ["a"]
    assert 0.4 <= time.monotonic() - start < 2.0


def test_the_backoff_doubles_from_its_floor_to_its_ceiling_and_resets():
    backoff = Backoff(0.5)
    waits = [backoff() for _ in range(8)]
    assert waits[0] == Backoff.LOW and waits[-1] == 0.5
    assert all(b == min(2 * a, 0.5) for a, b in zip(waits, waits[1:]))
    backoff.reset()
    assert backoff() == Backoff.LOW
    assert Backoff(0.001)() == 0.001  # a ceiling under the floor wins


def test_the_supernode_loop_polls_on_the_backoff_and_waits_briefly_on_its_own_state(monkeypatch):
    import flwr.supernode.start_client_internal as loop

    monkeypatch.setattr(loop, "time", loop.time)  # restored after the test
    monkeypatch.setattr(loop, "pull_objects", loop.pull_objects)
    got = iter([None, None, 7, None])
    monkeypatch.setattr(loop, "_pull_and_store_message", lambda **kw: next(got))
    rang = []
    assert prompt_supernode(0.4, lambda: rang.append(1))
    clock = loop.time
    assert isinstance(clock, SupernodeClock) and clock.monotonic is time.monotonic
    assert isinstance(loop.pull_objects, functools.partial)
    assert loop.pull_objects.keywords == {"initial_backoff": Backoff.LOW, "backoff_cap": 1.0}
    slept = []
    monkeypatch.setattr(time, "sleep", slept.append)
    clock.sleep(3)  # Flower's idle poll
    clock.sleep(3)
    clock.sleep(0.5)  # Flower's wait for a reply in its own state
    assert slept == [Backoff.LOW, 2 * Backoff.LOW, Backoff.LOW]
    assert [loop._pull_and_store_message() for _ in range(3)] == [None, None, 7]  # a message: the backoff resets
    assert rang == [1]  # and the executor is woken, once
    clock.sleep(3)
    assert slept[-1] == Backoff.LOW


def test_another_flower_keeps_its_own_waits(monkeypatch):
    import flwr.supernode.start_client_internal as loop

    monkeypatch.delattr(loop, "_pull_and_store_message")
    assert not prompt_supernode(0.4)
    assert loop.time is time
