"""A run that anchors its ledger (`ledger.anchor`, `ledger.anchor_every`): the signed root
goes on eth-tester's chain every N rounds and at the end, each recorded as an `anchor`
entry; verification checks every anchor against the chain and catches a chain that lacks
one (another chain, or the same chain reorganised to before it). `ledger verify-proof`
checks what `ledger prove` printed."""

from __future__ import annotations

import json

import pytest

from fedmeta.cli import main
from fedmeta.config import Config
from fedmeta.errors import ConfigError, VerificationError
from fedmeta.federated.driver import run_federated
from fedmeta.ledger import Ledger, verify_ledger
from fedmeta.rundir import RunDir

web3 = pytest.importorskip("web3")
pytest.importorskip("eth_tester")


def config(tmp_path, **ledger) -> Config:
    return Config.model_validate({
        "run": {"seed": 1}, "data": {"name": "sinusoid"}, "model": {"name": "mlp", "hidden": [8]},
        "meta": {"eval_inner_steps": 1},
        "federated": {"rounds": 4, "n_clients": 6, "held_out_clients": 2, "clients_per_round": 3, "eval_every": 2},
        "ledger": {"enabled": True, "server_key": str(tmp_path / "server.pem"), **ledger}})


def entries(run_dir) -> list[dict]:
    with Ledger.open(run_dir) as ledger:
        return [json.loads(body) for _, body, _ in ledger.entries()]


@pytest.fixture
def chain(monkeypatch):
    """One eth-tester chain that the run anchors on and the test then reads."""
    w3 = web3.Web3(web3.EthereumTesterProvider())
    monkeypatch.setattr("fedmeta.ledger.anchor.chain_for", lambda spec: w3)
    return w3


def test_a_run_anchors_every_n_rounds_and_its_end(tmp_path, chain):
    cfg = config(tmp_path, anchor="eth-tester", anchor_every=2)
    run = RunDir.create(tmp_path / "run", cfg)
    summary = run_federated(cfg, run, show_progress=False)
    body = entries(run.path)
    kinds = [e["type"] for e in body]
    anchors = [i for i, k in enumerate(kinds) if k == "anchor"]
    assert [kinds[i - 1] for i in anchors] == ["round", "round", "end"]  # after rounds 2 and 4, and the end
    assert [body[i - 1].get("round") for i in anchors[:2]] == [2, 4]
    assert summary["ledger"]["anchors"] == {"count": 3, "checked_on_chain": True}
    verify_ledger(run.path, anchor=chain)  # every anchor's transaction carries its root
    for i in anchors:
        tx = chain.eth.get_transaction(body[i]["tx_hash"])
        assert bytes(tx["input"]).endswith(bytes.fromhex(body[i]["root"]))
    with pytest.raises(VerificationError, match="a mined transaction"):  # a chain that never saw them
        verify_ledger(run.path, anchor=web3.Web3(web3.EthereumTesterProvider()))


def test_a_reorganised_chain_that_dropped_an_anchor_is_caught(tmp_path, chain):
    before = chain.testing.snapshot()
    cfg = config(tmp_path, anchor="eth-tester", anchor_every=4)
    run = RunDir.create(tmp_path / "run", cfg)
    run_federated(cfg, run, show_progress=False)
    verify_ledger(run.path, anchor=chain)
    chain.testing.revert(before)  # the blocks holding the anchors are gone
    with pytest.raises(VerificationError, match="anchor transaction .*: expected a mined transaction, got none"):
        verify_ledger(run.path, anchor=chain)


def test_a_resumed_run_does_not_anchor_a_round_twice(tmp_path, chain):
    from fedmeta.federated.runtime import Runtime

    cfg = config(tmp_path, anchor="eth-tester", anchor_every=1)
    runtime = Runtime(cfg)
    exchange = runtime.transport.exchange

    def dying(round_, attempt, sampled, b):
        if round_ == 3:
            raise KeyboardInterrupt
        return exchange(round_, attempt, sampled, b)

    runtime.transport.exchange = dying
    run = RunDir.create(tmp_path / "run", cfg)
    with pytest.raises(KeyboardInterrupt):
        run_federated(cfg, run, show_progress=False, runtime=runtime)
    summary = run_federated(cfg, RunDir(run.path), resume=True, show_progress=False)
    kinds = [e["type"] for e in entries(run.path)]
    assert kinds.count("anchor") == 5  # rounds 1-4 and the end, each once
    assert summary["ledger"]["anchors"]["count"] == 5
    verify_ledger(run.path, anchor=chain)


@pytest.mark.parametrize("ledger,field", [
    ({"anchor": "ftp://node"}, "ledger.anchor"),
    ({"anchor_every": 2}, "ledger.anchor_every"),
    ({"enabled": False, "anchor": "eth-tester"}, "ledger.anchor"),
])
def test_bad_anchor_settings_are_refused_naming_the_field(tmp_path, ledger, field):
    import tomli_w

    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"data": {"name": "sinusoid"}, "federated": {"n_clients": 4, "clients_per_round": 2},
                                   "ledger": {"enabled": True, **ledger}}))
    from fedmeta.config import load_config

    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == field


def test_verify_proof_checks_what_prove_printed(tmp_path, capsys):
    cfg = config(tmp_path)
    run = RunDir.create(tmp_path / "run", cfg)
    run_federated(cfg, run, show_progress=False)
    assert main(["ledger", "prove", str(run.path), "--entry", "2"]) == 0
    proof = tmp_path / "proof.json"
    proof.write_text(capsys.readouterr().out)
    assert main(["ledger", "verify-proof", str(proof)]) == 0
    assert "ok: entry 2" in capsys.readouterr().out
    doc = json.loads(proof.read_text())
    for field, value in (("entry", doc["entry"].replace('"round":', '"round": ')), ("root", "00" * 32),
                         ("index", doc["index"] + 1)):
        (tmp_path / "bad.json").write_text(json.dumps({**doc, field: value}))
        assert main(["ledger", "verify-proof", str(tmp_path / "bad.json")]) == 1
        assert "fedmeta: failed: proof" in capsys.readouterr().err
    assert main(["ledger", "verify-proof", str(proof), "--public-key", "ab" * 32]) == 1
    (tmp_path / "junk.json").write_text("{not json")
    assert main(["ledger", "verify-proof", str(tmp_path / "junk.json")]) == 2
