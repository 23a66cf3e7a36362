"""Fixtures of the ledger tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ledger_runs import Run, build_run


@pytest.fixture
def run() -> Iterator[Run]:
    """A fresh run folder, memory-backed where available (its fsyncs are not under test)."""
    shm = Path("/dev/shm")
    with tempfile.TemporaryDirectory(dir=shm if shm.is_dir() else None) as tmp:
        yield build_run(Path(tmp) / "run")
