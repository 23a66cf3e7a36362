"""A small signed run folder shared by the ledger tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmeta.ledger import RunLedger, keys, sign_update, store_model

RUN_ID = "run-under-test"


@dataclass
class Run:
    dir: Path
    server_key: Ed25519PrivateKey
    client_keys: dict[str, Ed25519PrivateKey]
    models: list[str]  # sha256 of the initial model, then of each round's

    @property
    def server_public(self) -> str:
        return keys.public_key_hex(self.server_key)


def build_run(run_dir: Path, rounds: int = 3) -> Run:
    server = keys.generate()
    clients = {f"client-{i}": keys.generate() for i in range(3)}
    models = [store_model(run_dir, b"initial weights")]
    with RunLedger.create(run_dir, server) as run:
        run.start(
            "cfg-sha",
            "0.1.0",
            {c: keys.public_key_hex(k) for c, k in clients.items()},
            run_id=RUN_ID,
        )
        for r in range(1, rounds + 1):
            updates = {
                c: sign_update(k, RUN_ID, r, c, f"update {c} {r}".encode())
                for c, k in clients.items()
            }
            models.append(store_model(run_dir, f"weights after round {r}".encode()))
            run.round(
                r,
                models[-1],
                models[-2],
                sorted(clients),
                {c: u.commitment for c, u in updates.items()},
                "fedavg",
                0.5 * r,
                1e-5,
                {"loss": 1.0 / r},
                [],
            )
        run.end(models[-1], {"rounds": rounds})
    return Run(run_dir, server, clients, models)


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return build_run(tmp_path / "run")
