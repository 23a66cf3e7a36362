"""Fixtures of the ledger tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from ledger_runs import Run, build_run


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return build_run(tmp_path / "run")
