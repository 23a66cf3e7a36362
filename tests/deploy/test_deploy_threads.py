"""One thread rule for every process of a run (`fedmeta.threads`): it always sets an explicit
count, and a ClientApp applies it before it computes, so a deployed client computes what an
in-process client computes whatever thread count its process started with."""

import pytest
import torch

from fedmeta.federated.training import Training
from fedmeta.threads import default_threads, threads_for, use_threads


@pytest.fixture(autouse=True)
def _restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_the_rule_always_sets_an_explicit_count(config, monkeypatch):
    vmapped, looped = config(client_batching="vmap"), config(client_batching="loop")
    pinned = looped.model_copy(update={"run": looped.run.model_copy(update={"threads": 3})})
    for start in (1, 2, 5):  # whatever the process started with
        torch.set_num_threads(start)
        assert use_threads(vmapped, "vmap") == torch.get_num_threads() == 1
        torch.set_num_threads(start)
        assert use_threads(looped, "loop") == torch.get_num_threads() == default_threads()
        torch.set_num_threads(start)
        assert use_threads(pinned, "loop") == torch.get_num_threads() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert default_threads() == threads_for(looped, "loop") == 3


@pytest.mark.parametrize("batching", ["vmap", "loop"])
def test_a_client_computes_with_the_in_process_thread_count(config, grid_factory, deployed, monkeypatch, batching):
    """A fresh ClientApp process starts with torch's default thread count (every core), a
    test process with whatever an earlier run left; the client must compute with the rule's
    count, as the in-process run does."""
    cfg = config(client_batching=batching)
    rule = threads_for(cfg, batching)
    seen = []
    deltas = Training.deltas

    def recording(self, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return deltas(self, *args, **kwargs)

    monkeypatch.setattr(Training, "deltas", recording)
    grid = grid_factory(3)
    runtime = deployed(cfg, grid, min_nodes=3, wait=1)
    other = rule + 1
    handlers = grid.send_and_receive

    def fresh_process(messages, **kwargs):  # each message lands in a process with another thread count
        replies = []
        for m in messages:
            torch.set_num_threads(other)
            replies.extend(handlers([m], **kwargs))
        return replies

    grid.send_and_receive = fresh_process
    runtime.run_round()
    trains = [m for m in grid.sent if m.metadata.message_type == "train"]
    assert len(trains) == 2 and seen == [rule] * len(trains)


def test_the_default_stays_within_the_cgroup_cpu_quota(tmp_path):
    from fedmeta.threads import cpu_quota

    assert cpu_quota(tmp_path) is None  # no cgroup files: unlimited
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cpu_quota(tmp_path) is None
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cpu_quota(tmp_path) == 2  # 1.5 CPUs of time: two threads
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cpu_quota(tmp_path) == 4
    assert 1 <= default_threads() <= (cpu_quota() or default_threads())
