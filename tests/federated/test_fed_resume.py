"""A run killed with SIGKILL mid-way and resumed ends with the uninterrupted run's parameters."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import torch

from fedmeta.ledger import verify_ledger

CONFIG = """
[run]
seed = 3
[data]
name = "sinusoid"
k_shot = 5
k_query = 5
[model]
name = "mlp"
hidden = [32, 32]
[federated]
rounds = 12
n_clients = 20
held_out_clients = 5
clients_per_round = 5
local_steps = 3
local_steps_min = 1
tasks_per_step = 4
local_lr = 0.01
strategy = "fedadam"
server_lr = 0.03
compression = "topk"
topk_fraction = 0.2
dropout_rate = 0.2
eval_every = 4
[ledger]
enabled = true
"""


def fedmeta(*args: str, home: Path) -> subprocess.Popen:
    env = {**os.environ, "FEDMETA_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "fedmeta", "run", *args, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)


def test_resume_after_sigkill_reproduces_final_parameters(tmp_path: Path):
    cfg = tmp_path / "fed.toml"
    cfg.write_text(CONFIG)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert fedmeta(str(cfg), "--out", str(full), home=tmp_path).wait(timeout=300) == 0

    proc = fedmeta(str(cfg), "--out", str(killed), home=tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a few rounds are checkpointed, before the end
        ck = killed / "checkpoint.pt"
        if ck.exists() and torch.load(ck, weights_only=True)["state"]["simulation"]["round"] >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.pt").exists(), "the run finished before it could be killed"

    assert fedmeta("--resume", str(killed), home=tmp_path).wait(timeout=300) == 0
    a, b = torch.load(full / "model.pt"), torch.load(killed / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rounds = lambda p: [line for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds(full)) == len(rounds(killed))
    # the ledger of the killed-and-resumed run verifies and records each round exactly once,
    # with the same models as the uninterrupted run's ledger
    key = json.loads((full / "summary.json").read_text())["ledger"]["server_public_key"]
    for run in (full, killed):
        verify_ledger(run, public_key=key)
    history = lambda p: [(e["round"], e["model_sha256"]) for e in entries(p) if e["type"] == "round"]  # noqa: E731
    assert history(killed) == history(full) and [r for r, _ in history(full)] == list(range(1, 13))


def entries(run: Path) -> list[dict]:
    with sqlite3.connect(run / "ledger.db") as db:
        return [json.loads(body) for (body,) in db.execute("SELECT body FROM entries ORDER BY idx")]
