"""Anchoring signed tree heads on an Ethereum chain (web3.py, imported lazily).

A transaction from the operator's account to itself carries
``ANCHOR_TAG || size (8 bytes big-endian) || root`` as its data; the ledger records the
transaction hash in an ``anchor`` entry and verification reads the transaction back.
Once mined, the chain holds a time-stamped copy of the root that the operator can no
longer rewrite, so even the server key's holder cannot later swap the history. The same
code runs on eth-tester's in-process chain (`EthereumTesterProvider`) and on a node
(`connect(url)`).
"""

from __future__ import annotations

import struct
from typing import Any

from fedmeta.errors import FedmetaError, VerificationError
from fedmeta.ledger.log import TreeHead
from fedmeta.ledger.run import RunLedger

ANCHOR_TAG = b"fedmeta-sth/1"


def connect(url: str) -> Any:
    """A `web3.Web3` talking JSON-RPC over HTTP to the node at `url`."""
    from web3 import Web3

    return Web3(Web3.HTTPProvider(url))


def chain_for(spec: str) -> Any:
    """The chain `ledger.anchor` names: eth-tester's in-process chain ("eth-tester"), which
    lives as long as this process, or the node at a JSON-RPC URL."""
    if spec != "eth-tester":
        return connect(spec)
    from web3 import EthereumTesterProvider, Web3

    return Web3(EthereumTesterProvider())


def check_chain_installed(spec: str | None) -> None:
    """`ledger.anchor` needs web3 (and eth-tester for "eth-tester"): one line if missing."""
    import importlib.util

    from fedmeta.errors import ConfigError

    needed = [] if spec is None else ["web3"] + (["eth_tester"] if spec == "eth-tester" else [])
    if any(importlib.util.find_spec(m) is None for m in needed):
        raise ConfigError("ledger.anchor", spec, "installed web3 and eth-tester: pip install 'fedmeta[chain]'")


def anchor_data(size: int, root: bytes) -> bytes:
    return ANCHOR_TAG + struct.pack(">Q", size) + root


def anchor_root(w3: Any, size: int, root: bytes, sender: str | None = None) -> str:
    """Send and mine the anchoring transaction; returns its hash as 0x-hex."""
    sender = sender or w3.eth.default_account or w3.eth.accounts[0]
    tx_hash = w3.eth.send_transaction(
        {"from": sender, "to": sender, "value": 0, "data": anchor_data(size, root)}
    )
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1:
        raise FedmetaError(f"anchor transaction {w3.to_hex(tx_hash)} failed on chain")
    return w3.to_hex(tx_hash)


def anchor_latest(run: RunLedger, w3: Any, sender: str | None = None) -> TreeHead:
    """Anchor the latest signed root of `run` and record the transaction in its ledger."""
    head = run.ledger.tree_heads()[-1]
    tx_hash = anchor_root(w3, head.size, head.root, sender)
    return run.anchored(head.size, head.root.hex(), int(w3.eth.chain_id), tx_hash)


def check_anchor(w3: Any, tx_hash: str, size: int, root: bytes, chain_id: int) -> None:
    """Return None if `tx_hash` on the chain `w3` reaches carries (size, root), else raise."""
    from web3.exceptions import TransactionNotFound

    if int(w3.eth.chain_id) != chain_id:
        raise VerificationError(f"chain of anchor {tx_hash}", chain_id, int(w3.eth.chain_id))
    try:
        tx = w3.eth.get_transaction(tx_hash)
        receipt = w3.eth.get_transaction_receipt(tx_hash)
    except TransactionNotFound:
        raise VerificationError(
            f"anchor transaction {tx_hash}", "a mined transaction", "none"
        ) from None
    if receipt["status"] != 1:
        raise VerificationError(f"status of anchor transaction {tx_hash}", 1, receipt["status"])
    expected, got = anchor_data(size, root), bytes(tx["input"])
    if got != expected:
        raise VerificationError(f"data of anchor transaction {tx_hash}", expected.hex(), got.hex())
