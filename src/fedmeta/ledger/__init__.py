"""Tamper-evident, signed ledger of model versions (RFC 9162 Merkle log in SQLite)."""

from fedmeta.ledger.commitments import (
    RejectReason,
    SignatureRefused,
    SignedUpdate,
    UpdateVerifier,
    sign_update,
)
from fedmeta.ledger.log import Ledger, TreeHead
from fedmeta.ledger.run import RunLedger, store_model
from fedmeta.ledger.verify import verify_ledger

__all__ = [
    "Ledger",
    "RejectReason",
    "SignatureRefused",
    "RunLedger",
    "SignedUpdate",
    "TreeHead",
    "UpdateVerifier",
    "sign_update",
    "store_model",
    "verify_ledger",
]
