"""Real Flower processes under faults, on loopback: killing `fedmeta deploy local` (SIGKILL)
takes every Flower process with it; killing one supernode (SIGKILL) mid-run leaves a run
that completes with the survivors; a ServerApp failure reaches the terminal as itself.

Every process these tests start carries a tag in its environment, so the tests find all
of them (grandchildren included: Flower's superexecs, ServerApp and ClientApps) and kill
whatever is left when they end. Every wait is bounded."""

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning"),
              pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds processes in /proc; the guard is Linux-only")]
TAG = "FEDMETA_TEST_TAG"


def tagged(tag: str) -> dict[int, str]:
    """Live (not zombie) processes whose environment holds TAG=tag: pid -> command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if f"{TAG}={tag}".encode() not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                continue
            found[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
    return found


def wait_until(condition, seconds: float, what: str, proc: subprocess.Popen | None = None):
    stop = time.monotonic() + seconds
    while time.monotonic() < stop:
        if (value := condition()):
            return value
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"fedmeta exited with {proc.returncode} while waiting for {what}")
        time.sleep(0.2)
    pytest.fail(f"no {what} after {seconds:.0f} s")


class Deployment:
    """`fedmeta deploy local` in a subprocess (its own session), tagged."""

    def __init__(self, tmp_path: Path, cfg, *args: str):
        self.tag, self.out = uuid.uuid4().hex, tmp_path / "run"
        (tmp_path / "cfg.toml").write_text(cfg.to_toml())
        self.stderr = tmp_path / "stderr.txt"
        env = {**os.environ, TAG: self.tag, "FEDMETA_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}  # logs kept here
        with open(self.stderr, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "fedmeta", "deploy", "local", str(tmp_path / "cfg.toml"),
                                          "--out", str(self.out), *args], env=env, stdout=subprocess.DEVNULL,
                                         stderr=err, start_new_session=True)

    def processes(self) -> dict[int, str]:
        return {pid: cmd for pid, cmd in tagged(self.tag).items() if pid != self.proc.pid}

    def rows(self) -> list[dict]:
        path = self.out / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


def test_killing_the_launcher_kills_every_flower_process(config, tmp_path):
    run = Deployment(tmp_path, config(rounds=50), "--clients", "2")
    try:
        def started():  # superlink, its superexec, the ServerApp, `flwr run`, 2 supernodes and their ClientApp executors
            cmds = list(run.processes().values())
            return (sum("flower-superexec" in c for c in cmds) == 1 and any("flwr-serverapp" in c for c in cmds)
                    and sum("fedmeta.deploy.executor" in c for c in cmds) == 2)

        wait_until(started, 120, "running deployment", run.proc)
        running = run.processes()
        link = next(c for c in running.values() if "flower-superlink" in c).split()
        assert link[link.index("--host") + 1] == "127.0.0.1"  # loopback only
        os.kill(run.proc.pid, signal.SIGKILL)
        run.proc.wait(timeout=10)
        stop = time.monotonic() + 10
        while (left := run.processes()) and time.monotonic() < stop:
            time.sleep(0.2)
        assert not left, f"{len(left)} of {len(running)} Flower processes outlived the launcher: {left}"
    finally:
        run.close()


@pytest.mark.slow
def test_a_server_app_failure_reaches_the_terminal(config, tmp_path):
    """One supernode for two sampled clients with min_clients = 2: the ServerApp stops at
    round 1 with the in-process error, which the launcher prints (not only Flower's log)."""
    run = Deployment(tmp_path, config(rounds=2, min_clients=2, max_retries=0), "--clients", "1")
    try:
        assert run.proc.wait(timeout=240) == 1
        err = run.stderr.read_text().strip().splitlines()[-1]
        assert err.startswith("fedmeta: failed: the ServerApp failed: FedmetaError: round 1: only 1 of 2 sampled clients"), err
        assert "federated.min_clients = 2" in err
    finally:
        run.close()


@pytest.mark.slow
def test_a_killed_supernode_is_dropped_and_the_run_completes(config, tmp_path):
    """SIGKILL one of three supernodes after round 1; the superlink then answers for it (once
    it misses its heartbeats) and the rounds that sampled it complete with the survivors."""
    from fedmeta.federated.runtime import Runtime

    cfg = config(rounds=4, clients_per_round=2, min_clients=1)
    server = Runtime(cfg).server
    sampled = {r: server.sampler.sample(server.generator(r, 0)) for r in (2, 3, 4)}  # the in-process sample, as the server draws it
    assert any(1 in s for s in sampled.values())
    run = Deployment(tmp_path, cfg, "--clients", "3", "--deadline", "300")
    try:
        wait_until(lambda: any(r["round"] >= 1 for r in run.rows()), 180, "round 1", run.proc)
        victim = next(pid for pid, cmd in run.processes().items() if "fedmeta.deploy.supernode" in cmd and "partition-id=1" in cmd)
        os.kill(victim, signal.SIGKILL)
        assert run.proc.wait(timeout=480) == 0, run.stderr.read_text()
        summary = json.loads((run.out / "summary.json").read_text())
        assert summary["rounds"] == 4
        after = {r["round"]: r for r in run.rows() if r["split"] == "test" and r["round"] >= 2}
        assert sorted(after) == [2, 3, 4]
        assert {r: after[r]["dropped"] for r in after} == {r: int(1 in s) for r, s in sampled.items()}
        assert all(after[r]["clients"] == 2 - int(1 in s) for r, s in sampled.items())
    finally:
        run.close()
