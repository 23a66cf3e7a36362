"""`PromptGrid`: Flower's push and pull, with replies collected as they arrive (Flower's own
`send_and_receive` sleeps 3 s between pulls): every reply comes back, soon after it
arrives; a message nobody answers ends the wait at the timeout; other calls reach the grid."""

import time
from types import SimpleNamespace

from fedmeta.deploy.prompt import PromptGrid


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
