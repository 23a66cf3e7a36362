"""`fedmeta deploy`: refusals are one line naming the field; the commands it prints carry
TLS certificates to Flower's flags; the app folder names our ServerApp/ClientApp."""

import shlex
import tomllib

import pytest

from fedmeta.cli import main


def test_a_simulated_attack_is_refused_before_anything_starts(tmp_path, capsys):
    code = main(["deploy", "local", "--set", "federated.attack.name='sign_flip'", "--set", "federated.attack.fraction=0.2",
                 "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "federated.attack.name" in err
    assert not (tmp_path / "r").exists()


def test_too_many_clients_is_refused(config, tmp_path, capsys):
    (tmp_path / "cfg.toml").write_text(config().to_toml())
    code = main(["deploy", "local", str(tmp_path / "cfg.toml"), "--clients", "4", "--out", str(tmp_path / "r")])
    assert code == 2 and "--clients" in capsys.readouterr().err


def test_tls_files_reach_flower_flags(tmp_path, capsys):
    for name in ("ca.pem", "cert.pem", "key.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n")
    assert main(["deploy", "superlink", "--port", "9100", "--ssl-ca-certfile", str(tmp_path / "ca.pem"),
                 "--ssl-certfile", str(tmp_path / "cert.pem"), "--ssl-keyfile", str(tmp_path / "key.pem"), "--print"]) == 0
    link = shlex.split(capsys.readouterr().out)
    assert "--insecure" not in link and link[link.index("--ssl-certfile") + 1] == str(tmp_path / "cert.pem")
    assert main(["deploy", "supernode", "--superlink", "10.0.0.1:9100", "--partition-id", "2", "--num-partitions", "5",
                 "--root-certificates", str(tmp_path / "ca.pem"), "--data-dir", str(tmp_path), "--print"]) == 0
    node = shlex.split(capsys.readouterr().out)
    assert node[node.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    assert node[node.index("--node-config") + 1] == f'partition-id=2 num-partitions=5 data-dir="{tmp_path}"'
    assert main(["deploy", "supernode", "--superlink", "h:1", "--partition-id", "0", "--num-partitions", "1", "--print"]) == 2


def test_an_owners_supernode_carries_its_own_file(tmp_path, capsys):
    own = tmp_path / "st-marys.csv"
    own.write_text("age,outcome\n1,good\n")
    assert main(["deploy", "supernode", "--superlink", "127.0.0.1:9100", "--data", str(own), "--owner", "st-marys",
                 "--insecure", "--print"]) == 0
    node = shlex.split(capsys.readouterr().out)
    assert node[node.index("--node-config") + 1] == f'data-file="{own}" owner="st-marys"'


def test_app_folder_names_the_apps_and_the_run(config, tmp_path):
    (tmp_path / "cfg.toml").write_text(config().to_toml())
    assert main(["deploy", "app", str(tmp_path / "cfg.toml"), "--set", "federated.rounds=4", "--dir", str(tmp_path / "app"),
                 "--out", str(tmp_path / "run")]) == 0
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert project["components"] == {"serverapp": "fedmeta.deploy.serverapp:server_app",
                                     "clientapp": "fedmeta.deploy.clientapp:client_app"}
    assert project["config"]["out"] == str(tmp_path / "run")
    assert tomllib.loads((tmp_path / "app" / "config.toml").read_text())["federated"]["rounds"] == 4


def _files(folder):
    return sorted(p.relative_to(folder) for p in folder.rglob("*"))


BAD_INPUT = [  # (argv after `deploy`, the option the error names, the value it names)
    (["local", "CFG", "--deadline", "-1"], "--deadline", "-1"),
    (["local", "CFG", "--deadline", "0"], "--deadline", "0"),
    (["local", "CFG", "--clients", "0"], "--clients", "0"),
    (["app", "CFG", "--min-nodes", "-3"], "--min-nodes", "-3"),
    (["app", "--min-nodes", "-3"], "--min-nodes", "-3"),  # before the (undeployable) built-in demo's own error
    (["local", "--clients", "0"], "--clients", "0"),
    (["app", "CFG", "--min-nodes", "4"], "--min-nodes", "4"),
    (["app", "CFG", "--dir", "FILE"], "--dir", "FILE"),
    (["app", "CFG", "--out", "FILE"], "--out", "FILE"),
    (["app", "CFG", "--wait", "-5"], "--wait", "-5"),
    (["app", "CFG", "--deadline", "0"], "--deadline", "0"),
    (["superlink", "--insecure", "--port", "99999", "--print"], "--port", "99999"),
    (["superlink", "--insecure", "--port", "-1", "--print"], "--port", "-1"),
    (["superlink", "--insecure", "--host", "0.0.0.0", "--print"], "--host", "0.0.0.0"),
    (["superlink", "--insecure", "--host", "10.1.2.3", "--print"], "--host", "10.1.2.3"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "-1", "--num-partitions", "3", "--insecure",
      "--print"], "--partition-id", "-1"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "3", "--num-partitions", "3", "--insecure",
      "--print"], "--partition-id", "3"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "0", "--insecure",
      "--print"], "--num-partitions", "0"),
    (["supernode", "--superlink", "nonsense", "--partition-id", "0", "--num-partitions", "3", "--insecure", "--print"],
     "--superlink", "nonsense"),
    (["supernode", "--superlink", "127.0.0.1:99999", "--partition-id", "0", "--num-partitions", "3", "--insecure",
      "--print"], "--superlink", "127.0.0.1:99999"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "3", "--port", "99999",
      "--insecure", "--print"], "--port", "99999"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "3", "--port", "-1",
      "--insecure", "--print"], "--port", "-1"),
    (["supernode", "--superlink", "10.0.0.1:9092", "--partition-id", "0", "--num-partitions", "3", "--insecure",
      "--print"], "--superlink", "10.0.0.1"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "3", "--insecure",
      "--data-dir", "FILE", "--print"], "--data-dir", "FILE"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "3", "--insecure",
      "--key", "FILE.pem", "--print"], "--key", "FILE.pem"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--insecure", "--print"], "--partition-id", "None"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--data", "FILE", "--insecure", "--print"], "--data", "FILE"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--data", "owner.csv", "--partition-id", "0", "--insecure",
      "--print"], "--partition-id", "0"),
    (["supernode", "--superlink", "127.0.0.1:9092", "--partition-id", "0", "--num-partitions", "3", "--owner", "a",
      "--insecure", "--print"], "--owner", "a"),
]


@pytest.mark.parametrize(("argv", "option", "value"), BAD_INPUT, ids=[
    f"{c[0][0]}{' demo' if c[0][0] in ('local', 'app') and 'CFG' not in c[0] else ''} {c[1]}={c[2]}" for c in BAD_INPUT])
def test_bad_input_is_one_line_exit_2_and_nothing_written(config, tmp_path, monkeypatch, capsys, argv, option, value):
    """`fedmeta: error: <option> = <value>: <what is accepted>`, exit 2, before anything is
    written or started (the working folder holds only the config and a file named FILE)."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "cfg.toml").write_text(config().to_toml())
    (work / "FILE").write_text("not a folder")
    before = _files(tmp_path)
    argv = [{"CFG": str(work / "cfg.toml"), "FILE": str(work / "FILE")}.get(a, a) for a in argv]
    extra = ["--out", str(work / "run")] if argv[0] == "local" else ["--dir", str(work / "app")] if argv[0] == "app" else []
    code = main(["deploy", *argv, *extra] if "--dir" not in argv else ["deploy", *argv])
    out, err = capsys.readouterr()
    value = str(work / value) if value == "FILE" else value
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and out == ""
    assert err.startswith(f"fedmeta: error: {option} = ") and value in err
    assert _files(tmp_path) == before


def test_the_superlink_binds_loopback_unless_told_otherwise(tmp_path, capsys):
    def printed(*argv):
        assert main(["deploy", *argv, "--print"]) == 0
        cmd = shlex.split(capsys.readouterr().out)
        return cmd[cmd.index("--host") + 1] if "--host" in cmd else cmd[cmd.index("--superlink") + 1]

    assert printed("superlink", "--insecure") == "127.0.0.1"
    assert printed("superlink", "--insecure", "--host", "::1") == "::1"
    assert printed("superlink", "--insecure", "--host", "0.0.0.0", "--allow-insecure-remote") == "0.0.0.0"
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    tls = ["--ssl-ca-certfile", str(tmp_path / "ca.pem"), "--ssl-certfile", str(tmp_path / "ca.pem"),
           "--ssl-keyfile", str(tmp_path / "ca.pem")]
    assert printed("superlink", *tls) == "127.0.0.1"  # TLS too: another address only when given
    assert printed("superlink", *tls, "--host", "0.0.0.0") == "0.0.0.0"  # with TLS, no extra flag
    node = ["supernode", "--partition-id", "0", "--num-partitions", "2", "--insecure", "--superlink"]
    assert printed(*node, "localhost:9092") == "localhost:9092"
    assert printed(*node, "10.0.0.1:9092", "--allow-insecure-remote") == "10.0.0.1:9092"


def test_local_deployment_listens_on_loopback_only():
    from fedmeta.deploy.launch import superlink_command

    cmd = superlink_command(9092)
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1" and "--insecure" in cmd
