"""A real deployment on loopback: `fedmeta deploy local` starts flower-superlink, three
flower-supernode processes and `flwr run`; the run folder must hold what an in-process run
of the same config holds, with the same final parameters (seeded example-level DP, top-k
residuals kept by each supernode), and a ledger that verifies. Every Flower process is torn down, also on failure."""

import json

import pytest
import torch

from fedmeta.cli import main
from fedmeta.ledger import verify_ledger
from fedmeta.rundir import RunDir

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")


def test_loopback_deployment_equals_the_in_process_run(config, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    cfg = config(privacy={"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5,
                               "clip_norm": 1.0, "delta": 1e-5, "noise_seed": 7},
                 rounds=3, compression="topk", topk_fraction=0.3)  # the residual must live in each node's context
    cfg = cfg.model_copy(update={"ledger": cfg.ledger.model_copy(update={"enabled": True})})
    (tmp_path / "cfg.toml").write_text(cfg.to_toml())
    assert main(["run", str(tmp_path / "cfg.toml"), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    capsys.readouterr()
    assert main(["deploy", "local", str(tmp_path / "cfg.toml"), "--clients", "3", "--out", str(tmp_path / "flower")]) == 0
    local, flower = RunDir(tmp_path / "local"), RunDir(tmp_path / "flower")
    a, b = torch.load(local.path / "model.pt"), torch.load(flower.path / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    streamed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("round ")]
    assert [line.split()[1] for line in streamed] == [f"{m['round']}/3" for m in flower.metrics()]  # a line per row
    kept = {p.name for p in (flower.path / "flower-logs").iterdir()}
    assert {"superlink.log", "flwr-run.log", "supernode-0.log"} <= kept  # Flower's logs stay with the run
    strip = ("seconds", "ledger")
    sa, sb = (json.loads((r.path / "summary.json").read_text()) for r in (local, flower))
    assert {k: v for k, v in sa.items() if k not in strip} == {k: v for k, v in sb.items() if k not in strip}
    rows = [(m["round"], m["split"], m["epsilon"], m["bytes_up"]) for m in flower.metrics()]
    assert rows == [(m["round"], m["split"], m["epsilon"], m["bytes_up"]) for m in local.metrics()]
    verify_ledger(flower.path, public_key=sb["ledger"]["server_public_key"])
    assert (flower.path / "report.html").is_file()


SECURE = {  # privacy settings, the metric counting the clients in the sum, exchanges per round
    "secagg+": ({"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5, "clip_norm": 1.0,
                 "delta": 1e-5, "secagg_clip": 2.0}, "secagg_included", "secagg_bytes_up", 4),
    "ckks": ({"dp": "central", "noise_multiplier": 0.5, "clip_norm": 0.5}, "he_included", "he_exchange_seconds", 3),
}


@pytest.mark.slow
@pytest.mark.parametrize("scheme", sorted(SECURE))
def test_loopback_deployment_with_a_secure_sum_equals_the_in_process_run(config, tmp_path, monkeypatch, scheme):
    """SecAgg+ (four exchanges per round) or CKKS (keys dealt by client 0 through the
    superlink, three exchanges) between real processes; the in-process secure sum of the
    same updates gives the same model (to fixed-point or CKKS precision)."""
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    privacy, included, per_exchange, exchanges = SECURE[scheme]
    cfg = config(privacy={**privacy, "noise_seed": 7, "secure_aggregation": scheme}, rounds=2, clients_per_round=3)
    (tmp_path / "cfg.toml").write_text(cfg.to_toml())
    assert main(["run", str(tmp_path / "cfg.toml"), "--out", str(tmp_path / "local"), "--no-progress"]) == 0
    assert main(["deploy", "local", str(tmp_path / "cfg.toml"), "--clients", "3", "--out", str(tmp_path / "flower")]) == 0
    local, flower = RunDir(tmp_path / "local"), RunDir(tmp_path / "flower")
    a, b = torch.load(local.path / "model.pt"), torch.load(flower.path / "model.pt")
    assert all(torch.allclose(a[k], b[k], rtol=0, atol=1e-6) for k in a)
    rounds = [m for m in flower.metrics() if m["split"] == "test" and m["round"] > 0]
    assert [m[included] for m in rounds] == [3, 3] and all(len(m[per_exchange]) == exchanges for m in rounds)
    assert [m["epsilon"] for m in rounds] == [m["epsilon"] for m in local.metrics() if m["split"] == "test" and m["round"] > 0]


def certificates(folder):
    """A throwaway CA and a superlink certificate for 127.0.0.1 signed by it (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])

    def issue(subject, public, extension, critical):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now)
                .not_valid_after(now + datetime.timedelta(hours=1)).add_extension(extension, critical=critical)
                .sign(ca_key, hashes.SHA256()))

    ca = issue(ca_name, ca_key.public_key(), x509.BasicConstraints(ca=True, path_length=None), True)
    san = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    cert = issue(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]), key.public_key(), san, False)
    (folder / "ca.pem").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    return folder / "ca.pem", folder / "cert.pem", folder / "key.pem"


@pytest.mark.slow
def test_loopback_deployment_over_tls(config, tmp_path):
    from fedmeta.deploy.launch import TLS, run_local

    cfg = config("sinusoid", rounds=1)
    run = RunDir.create(tmp_path / "run", cfg)
    run.close()  # the ServerApp process is the folder's writer
    run_local(run.path / "config.toml", run.path, 3, 3, workdir=tmp_path / "work", tls=TLS(*certificates(tmp_path)),
              timeout=300)
    assert json.loads((run.path / "summary.json").read_text())["rounds"] == 1
    link = (tmp_path / "work" / "logs" / "superlink.log").read_text()
    assert "running on https://" in link and "TLS disabled" not in link
