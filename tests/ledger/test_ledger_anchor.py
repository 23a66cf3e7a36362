"""Anchoring tree-head roots on eth-tester's in-process chain (one transaction per test run)."""

from __future__ import annotations

import json

import pytest
from ledger_runs import Run, build_run

from fedmeta.errors import VerificationError
from fedmeta.ledger import Ledger, RunLedger, verify_ledger

web3 = pytest.importorskip("web3")


def last_entry(run: Run) -> dict:
    with Ledger.open(run.dir) as ledger:
        return json.loads([body for _, body, _ in ledger.entries()][-1])


@pytest.fixture(scope="module")
def anchored(tmp_path_factory):
    from fedmeta.ledger.anchor import anchor_latest

    w3 = web3.Web3(web3.EthereumTesterProvider())
    run = build_run(tmp_path_factory.mktemp("anchored") / "run")
    with RunLedger.open(run.dir, run.server_key) as ledger:
        anchor_latest(ledger, w3)
    return run, w3


def test_anchor_round_trips(anchored):
    from fedmeta.ledger.anchor import anchor_data

    run, w3 = anchored
    with Ledger.open(run.dir) as ledger:
        heads = ledger.tree_heads()
    entry = last_entry(run)
    anchored_head = heads[-2]  # the head the anchor entry refers to
    assert entry["type"] == "anchor" and entry["size"] == anchored_head.size
    verify_ledger(run.dir, public_key=run.server_public, anchor=w3)
    tx = w3.eth.get_transaction(entry["tx_hash"])
    assert bytes(tx["input"]) == anchor_data(anchored_head.size, anchored_head.root)
    assert bytes(tx["input"]).endswith(anchored_head.root)


def test_changed_root_is_caught(anchored):
    from fedmeta.ledger.anchor import check_anchor

    run, w3 = anchored
    with Ledger.open(run.dir) as ledger:
        heads = ledger.tree_heads()
    tx_hash = last_entry(run)["tx_hash"]
    head = heads[-2]
    check_anchor(w3, tx_hash, head.size, head.root, int(w3.eth.chain_id))
    with pytest.raises(VerificationError, match=f"expected .*{heads[-3].root.hex()}, got "):
        check_anchor(w3, tx_hash, head.size, heads[-3].root, int(w3.eth.chain_id))
    with pytest.raises(VerificationError, match="chain of anchor"):
        check_anchor(w3, tx_hash, head.size, head.root, int(w3.eth.chain_id) + 1)
    with pytest.raises(VerificationError, match="a mined transaction"):
        check_anchor(w3, "0x" + "ab" * 32, head.size, head.root, int(w3.eth.chain_id))


def test_anchor_entry_pointing_at_another_roots_transaction_is_caught(tmp_path, anchored):
    """The key holder claims an anchor for size 3 using the transaction that anchored size 6."""
    source, w3 = anchored
    tx_hash = last_entry(source)["tx_hash"]
    run = build_run(tmp_path / "run")
    with RunLedger.open(run.dir, run.server_key) as ledger:
        root3 = ledger.ledger.tree_heads()[2].root.hex()
        ledger.anchored(3, root3, int(w3.eth.chain_id), tx_hash)
    verify_ledger(run.dir)  # without the chain the claim is not looked up
    with pytest.raises(VerificationError, match="data of anchor transaction"):
        verify_ledger(run.dir, anchor=w3)
    with RunLedger.open(run.dir, run.server_key) as ledger:  # a root that is not the tree's
        ledger.anchored(4, root3, int(w3.eth.chain_id), tx_hash)
    with pytest.raises(VerificationError, match="anchored root at size 4"):
        verify_ledger(run.dir)
