"""`fedmeta deploy`: refusals are one line naming the field; the commands it prints carry
TLS certificates to Flower's flags; the app folder names our ServerApp/ClientApp."""

import shlex
import tomllib

from fedmeta.cli import main


def test_ckks_is_refused_before_anything_starts(tmp_path, capsys):
    code = main(["deploy", "local", "--set", "privacy.secure_aggregation='ckks'", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "privacy.secure_aggregation" in err
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
                 "--root-certificates", str(tmp_path / "ca.pem"), "--data-dir", "/data", "--print"]) == 0
    node = shlex.split(capsys.readouterr().out)
    assert node[node.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    assert node[node.index("--node-config") + 1] == 'partition-id=2 num-partitions=5 data-dir="/data"'
    assert main(["deploy", "supernode", "--superlink", "h:1", "--partition-id", "0", "--num-partitions", "1", "--print"]) == 2


def test_app_folder_names_the_apps_and_the_run(config, tmp_path):
    (tmp_path / "cfg.toml").write_text(config().to_toml())
    assert main(["deploy", "app", str(tmp_path / "cfg.toml"), "--set", "federated.rounds=4", "--dir", str(tmp_path / "app"),
                 "--out", str(tmp_path / "run")]) == 0
    project = tomllib.loads((tmp_path / "app" / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert project["components"] == {"serverapp": "fedmeta.deploy.flower:server_app",
                                     "clientapp": "fedmeta.deploy.flower:client_app"}
    assert project["config"]["out"] == str(tmp_path / "run")
    assert tomllib.loads((tmp_path / "app" / "config.toml").read_text())["federated"]["rounds"] == 4
