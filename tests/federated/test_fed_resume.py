"""A run killed with SIGKILL mid-way and resumed ends with the uninterrupted run's parameters."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

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
compression = "topk"
topk_fraction = 0.2
dropout_rate = 0.2
eval_every = 4
"""


def fedmeta(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedmeta", "run", *args, "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def test_resume_after_sigkill_reproduces_final_parameters(tmp_path: Path):
    cfg = tmp_path / "fed.toml"
    cfg.write_text(CONFIG)
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert fedmeta(str(cfg), "--out", str(full)).wait(timeout=300) == 0

    proc = fedmeta(str(cfg), "--out", str(killed))
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a few rounds are checkpointed, before the end
        ck = killed / "checkpoint.pt"
        if ck.exists() and torch.load(ck, weights_only=False)["simulation"]["round"] >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "model.pt").exists(), "the run finished before it could be killed"

    assert fedmeta("--resume", str(killed)).wait(timeout=300) == 0
    a, b = torch.load(full / "model.pt"), torch.load(killed / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    rounds = lambda p: [line for line in (p / "metrics.jsonl").read_text().splitlines()]
    assert len(rounds(full)) == len(rounds(killed))
