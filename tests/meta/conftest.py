import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """One torch thread: with two, another process on one of the two cores stalls every
    parallel region (a 25-task meta-step took 113 ms instead of 1.6 ms; docs/meta-learning.md)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
