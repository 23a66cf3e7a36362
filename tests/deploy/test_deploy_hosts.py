"""Several hosts: a superlink and three supernodes, each in a network namespace of its own
(veth pairs to a bridge in a fifth namespace, addresses 10.213.x.0/24; nothing is added to
the test machine's own namespace), started with the commands an operator types
(`fedmeta deploy superlink|supernode`, `flwr supernode register`, `flwr run`): TLS with a
throwaway CA whose certificate names the superlink's address, and Flower's node
authentication. A supernode whose key was not registered is refused; one restarted
mid-run rejoins; a superlink killed mid-run is restarted on its database and the run
resumes from its checkpoint with a ledger that verifies, every round once.

Needs root and `ip netns` (skipped otherwise). Every process runs under the deployment's
guard (`Processes`), and the namespaces are deleted whatever happens."""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmeta.deploy.launch import CONNECTION, TLS, Processes, write_app, write_connection
from fedmeta.ledger import Ledger, keys, verify_ledger
from fedmeta.rundir import RunDir

PORT = 9092
BIN = Path(sys.executable).parent


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


class Network:
    """Hosts in namespaces `<prefix>-<host>`, each with `eth0` on a bridge in `<prefix>-sw`,
    addresses `<subnet>.1`, `.2`, ... in the order given. The prefix is random, and nothing
    is added to the caller's namespace, so runs side by side do not meet."""

    HOSTS = ("link", "node0", "node1", "node2", "stranger")

    def __init__(self) -> None:
        self.prefix, self.subnet = f"fm{secrets.token_hex(3)}", f"10.213.{secrets.randbelow(256)}"
        self.namespaces: list[str] = []  # created so far, deleted by `close`
        self.hosts: dict[str, str] = {}  # name -> address

    def build(self) -> None:
        switch = self.namespace("sw")
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for n, name in enumerate(self.HOSTS, 1):
            ns, address = self.namespace(name), f"{self.subnet}.{n}"
            ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p-{name}", "netns", switch)
            ip("-n", switch, "link", "set", f"p-{name}", "master", "br0", "up")
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", ns, "link", "set", "eth0", "up")
            self.hosts[name] = address

    def namespace(self, name: str) -> str:
        ns = f"{self.prefix}-{name}"
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")  # a supernode's ClientApp API is on 127.0.0.1
        return ns

    def on(self, host: str, *cmd: str, **env: str) -> list[str]:
        """`cmd` run on `host`, with `env` added to its environment."""
        return ["ip", "netns", "exec", f"{self.prefix}-{host}", "env", *(f"{k}={v}" for k, v in env.items()), *cmd]

    def close(self) -> None:
        for ns in reversed(self.namespaces):
            for pid in ip("netns", "pids", ns, check=False).stdout.split():  # one outliving its guard
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
            ip("netns", "delete", ns, check=False)


@pytest.fixture
def network():
    """The hosts' network; skipped where namespaces cannot be made (not root, a container)."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2's `ip` for network namespaces")
    net = Network()
    try:
        try:
            net.build()
        except (subprocess.CalledProcessError, OSError) as err:
            pytest.skip(f"cannot build a network of namespaces here: {getattr(err, 'stderr', '') or err}")
        yield net
    finally:
        net.close()


def certificates(folder: Path, address: str) -> TLS:
    """A throwaway CA and a superlink certificate for `address` signed by it (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedmeta test CA")])

    def issue(subject, public, extension, critical):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
                .not_valid_after(now + datetime.timedelta(hours=2)).add_extension(extension, critical=critical)
                .sign(ca_key, hashes.SHA256()))

    ca = issue(ca_name, ca_key.public_key(), x509.BasicConstraints(ca=True, path_length=None), True)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(address))])
    cert = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, address)]), key.public_key(), san, False)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "superlink.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "superlink.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                             serialization.NoEncryption()))
    return TLS(folder / "ca.pem", folder / "superlink.pem", folder / "superlink.key")


def node_key(path: Path) -> Path:
    """A supernode's authentication key pair, as `ssh-keygen -t ecdsa -b 384` writes it:
    `path` (OpenSSH private key) and `path.pub`."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP384R1())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    path.with_suffix(".pub").write_bytes(key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                       serialization.PublicFormat.OpenSSH))
    return path


class Federation:
    """The hosts' processes (under `Processes`), the operator's `flwr` on the superlink's host."""

    def __init__(self, net: Network, tmp: Path, procs: Processes):
        self.net, self.tmp, self.procs, self.logs = net, tmp, procs, tmp / "logs"
        self.link = net.hosts["link"]
        self.tls = certificates(tmp / "pki", self.link)
        write_connection(tmp / "operator", f"{self.link}:{PORT}", TLS(self.tls.ca))
        self.running: dict[str, subprocess.Popen] = {}
        self.log: dict[str, Path] = {}  # name -> its latest log
        self.starts: dict[str, int] = {}

    def home(self, host: str) -> dict[str, str]:
        """Each host's own Flower and fedmeta folders, as on separate machines."""
        flwr = self.tmp / "operator" if host == "link" else self.tmp / "hosts" / host / "flwr"
        return {"FLWR_HOME": str(flwr), "FEDMETA_HOME": str(self.tmp / "hosts" / host / "fedmeta")}

    def start(self, name: str, host: str, *cmd: str) -> subprocess.Popen:
        """`cmd` on `host`, logging to `logs/<name>.log` (a restarted one to `<name>.2.log`, ...)."""
        self.starts[name] = n = self.starts.get(name, 0) + 1
        log = name if n == 1 else f"{name}.{n}"
        self.log[name] = self.logs / f"{log}.log"
        self.running[name] = self.procs.start(log, self.net.on(host, *cmd, **self.home(host)))
        return self.running[name]

    def flwr(self, *args: str, timeout: float = 60) -> str:
        """An operator's `flwr` command on the superlink's host; its output."""
        out = subprocess.run(self.net.on("link", str(BIN / "flwr"), *args, **self.home("link")), capture_output=True,
                             text=True, timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        if out.returncode:
            raise AssertionError(f"flwr {' '.join(args)} exited {out.returncode}: {out.stdout}{out.stderr}")
        return out.stdout

    def superlink(self) -> subprocess.Popen:
        t = self.tls
        proc = self.start("superlink", "link", str(BIN / "fedmeta"), "deploy", "superlink", "--host", self.link,
                          "--port", str(PORT), "--ssl-ca-certfile", str(t.ca), "--ssl-certfile", str(t.cert),
                          "--ssl-keyfile", str(t.key), "--enable-supernode-auth", "--database", str(self.tmp / "superlink.db"))
        self.wait(lambda: f"running on https://{self.link}:{PORT}" in self.log["superlink"].read_text(errors="replace"),
                  90, "superlink listening", "superlink")
        return proc

    def supernode(self, name: str, host: str, partition: int, key: Path | None) -> subprocess.Popen:
        auth = ["--auth-supernode-private-key", str(key)] if key is not None else []
        return self.start(name, host, str(BIN / "fedmeta"), "deploy", "supernode", "--superlink", f"{self.link}:{PORT}",
                          "--root-certificates", str(self.tls.ca), "--partition-id", str(partition),
                          "--num-partitions", "3", "--port", str(9094 + partition), *auth)

    def stop(self, name: str, sig: int = signal.SIGTERM) -> None:
        """SIGTERM to the process's group (a graceful stop); SIGKILL: its guard kills it and
        everything it started at once (a crash)."""
        proc = self.running.pop(name)
        if proc.poll() is None and sig == signal.SIGKILL:
            os.kill(proc.pid, signal.SIGUSR1)
        elif proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(timeout=30)

    def nodes(self) -> dict[int, str]:
        """The superlink's registered supernodes: node id -> status."""
        listed = json.loads(self.flwr("supernode", "list", CONNECTION, "--format", "json"))
        return {int(n["node-id"]): n["status"] for n in listed["nodes"]}

    def wait(self, condition, seconds: float, what: str, watch: str = "flwr-run"):
        """`condition()` once true; fails after `seconds`, or when the process `watch` ends."""
        stop = time.monotonic() + seconds
        while time.monotonic() < stop:
            ended = watch in self.running and self.running[watch].poll() is not None
            if value := condition():
                return value
            if ended:
                raise AssertionError(f"{watch} exited with {self.running[watch].returncode} while waiting for {what}")
            time.sleep(0.5)
        raise AssertionError(f"no {what} after {seconds:.0f} s")

    def dump(self) -> None:
        for log in sorted(self.logs.glob("*.log")):
            lines = log.read_text(errors="replace").splitlines()
            print(f"===== {log.name} (last 40 of {len(lines)} lines)", *lines[-40:], sep="\n")


def rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def rounds(run: Path) -> dict[int, dict]:
    """Each round's counts (clients, dropped, ...) from its metrics rows."""
    return {r["round"]: r for r in rows(run) if "clients" in r}


def test_node_authentication_reaches_flower_flags(tmp_path, capsys):
    from fedmeta.cli import main

    tls = certificates(tmp_path, "10.0.0.1")
    assert main(["deploy", "superlink", "--host", "10.0.0.1", "--ssl-ca-certfile", str(tls.ca), "--ssl-certfile",
                 str(tls.cert), "--ssl-keyfile", str(tls.key), "--enable-supernode-auth", "--database",
                 str(tmp_path / "state.db"), "--print"]) == 0
    link = shlex.split(capsys.readouterr().out)
    assert "--enable-supernode-auth" in link and link[link.index("--database") + 1] == str(tmp_path / "state.db")
    node = ["deploy", "supernode", "--superlink", "10.0.0.1:9092", "--root-certificates", str(tls.ca),
            "--partition-id", "0", "--num-partitions", "3", "--print", "--auth-supernode-private-key"]
    assert main([*node, str(node_key(tmp_path / "node"))]) == 0
    cmd = shlex.split(capsys.readouterr().out)
    assert cmd[cmd.index("--auth-supernode-private-key") + 1] == str(tmp_path / "node")
    for refused, option in ((["deploy", "superlink", "--insecure", "--enable-supernode-auth", "--print"],
                             "--enable-supernode-auth"),
                            ([*node, str(tmp_path / "node.pub")], "--auth-supernode-private-key"),  # not a private key
                            ([*node, str(tls.key)], "--auth-supernode-private-key"),  # PEM, not OpenSSH
                            (["deploy", "superlink", "--insecure", "--database", str(tmp_path / "no" / "x.db"), "--print"],
                             "--database")):
        assert main(refused) == 2
        assert capsys.readouterr().err.startswith(f"fedmeta: error: {option} = ")


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces are Linux")
def test_three_hosts_with_node_authentication_survive_restarts(network, config, tmp_path):
    """The run goes on while supernode 1 stops and restarts (its registered key gives it its
    node id back) and after the superlink's crash (its database keeps the registrations;
    the ServerApp resumes from the checkpoint). 3 to 4 minutes on 2 cores. A round takes
    about a second, so the run has enough of them to outlast a supernode's restart."""
    server_key = tmp_path / "server.pem"
    keys.save_private_key(signer := keys.generate(), server_key)
    cfg = config("sinusoid", rounds=80, clients_per_round=3)
    cfg = cfg.model_validate({**cfg.model_dump(exclude_none=True), "ledger": {"enabled": True, "server_key": str(server_key)}})
    run = RunDir.create(tmp_path / "run", cfg)
    run.close()  # the ServerApp process is the folder's writer
    app = write_app(tmp_path / "app", {"config": str(run.path / "config.toml"), "out": str(run.path), "min-nodes": 3,
                                       "wait": 300, "deadline": 120, "resume": False})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    key = {name: node_key(tmp_path / "keys" / name) for name in ("node0", "node1", "node2", "stranger")}
    with Processes(tmp_path / "logs", env) as procs:
        fed = Federation(network, tmp_path, procs)
        try:
            fed.superlink()
            registered = {}
            for i in range(3):
                out = fed.flwr("supernode", "register", str(key[f"node{i}"].with_suffix(".pub")), CONNECTION,
                               "--name", f"node{i}", "--format", "json")
                registered[i] = int(json.loads(out[out.index("{"):])["node-id"])
            strangers = {"stranger": fed.supernode("stranger", "stranger", 0, key["stranger"]),  # unregistered key
                         "keyless": fed.supernode("keyless", "stranger", 1, None)}
            for i in range(3):
                fed.supernode(f"node{i}", f"node{i}", i, key[f"node{i}"])
            for name, stranger in strangers.items():
                assert stranger.wait(timeout=90) != 0, f"{name} was admitted"
                assert "Failed to initialize the connection to the SuperLink" in fed.log[name].read_text(errors="replace")
            fed.wait(lambda: fed.nodes() == dict.fromkeys(registered.values(), "online"), 90,
                     "three registered supernodes online, and no other", "superlink")

            fed.start("flwr-run", "link", str(BIN / "flwr"), "run", str(app), CONNECTION, "--stream")
            fed.wait(lambda: 2 in rounds(run.path), 240, "round 2")
            fed.stop("node1")  # a graceful stop: the supernode deactivates its node
            gone = fed.wait(lambda: min((r for r, row in rounds(run.path).items() if r > 2 and row["clients"] == 2),
                                        default=0), 240, "a round without client 1")
            fed.supernode("node1", "node1", 1, key["node1"])
            back = fed.wait(lambda: [r for r, row in rounds(run.path).items() if r > gone and row["clients"] == 3],
                            240, "a round with client 1 back")
            assert fed.nodes()[registered[1]] == "online"  # the same node id: the key's

            fed.stop("superlink", signal.SIGKILL)  # the superlink crashes, and its ServerApp with it
            fed.stop("flwr-run")
            done = max(rounds(run.path))
            assert done < cfg.federated.rounds, f"the run ended (round {done}) before the superlink was killed"
            fed.superlink()
            assert set(fed.nodes()) == set(registered.values())  # the database kept the registrations
            fed.start("flwr-run", "link", str(BIN / "flwr"), "run", str(app), CONNECTION, "--run-config", "resume=true",
                      "--stream")
            fed.wait(lambda: (run.path / "summary.json").is_file(), 400, "summary.json of the resumed run")
        except BaseException:
            fed.dump()
            raise
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["rounds"] == cfg.federated.rounds and summary["ledger"]["verified"]
    verify_ledger(run.path, public_key=keys.public_key_hex(signer))
    with Ledger.open(run.path) as ledger:
        entries = [json.loads(body) for _, body, _ in ledger.entries()]
    clients = {e["round"]: set(e["clients"]) for e in entries if e["type"] == "round"}
    assert sorted(clients) == list(range(1, cfg.federated.rounds + 1))  # every round once, across the restart
    assert "1" not in clients[gone] and all("1" in clients[r] for r in back)
    assert all(clients[r] == {"0", "1", "2"} for r in range(done + 1, cfg.federated.rounds + 1))  # no node lost
    assert sorted(rounds(run.path)) == list(range(1, cfg.federated.rounds + 1))
