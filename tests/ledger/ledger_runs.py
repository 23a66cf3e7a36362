"""A small signed run folder for the ledger tests, built the way the runtime records a run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from fedmeta.ledger import (
    RunLedger,
    SignatureRefused,
    SignedUpdate,
    UpdateVerifier,
    keys,
    sign_update,
    store_model,
)

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
    """Entries: start, round 1, [rejection of a replay in round 2, round 2, ...], end."""
    server = keys.generate()
    clients = {f"client-{i}": keys.generate() for i in range(3)}
    participants = {c: keys.public_key_hex(k) for c, k in clients.items()}
    verifier = UpdateVerifier(participants, RUN_ID)
    models = [store_model(run_dir, b"initial weights")]
    previous: dict[str, SignedUpdate] = {}
    with RunLedger.create(run_dir, server) as run:
        run.start("cfg-sha", "0.1.0", participants, run_id=RUN_ID)
        for r in range(1, rounds + 1):
            payloads = {c: f"update {c} {r}".encode() for c in clients}
            updates = {c: sign_update(k, RUN_ID, r, c, payloads[c]) for c, k in clients.items()}
            for c, u in updates.items():
                verifier.check(u, payloads[c], r)
            rejected = []
            if r == 2:  # client-0 replays its round-1 message
                try:
                    verifier.check(previous["client-0"], b"update client-0 1", r)
                except SignatureRefused as err:
                    rejected.append(err.record())
                    run.rejection(**err.record())
            previous = updates
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
                rejected,
            )
        run.end(models[-1], {"rounds": rounds})
    return Run(run_dir, server, clients, models)
