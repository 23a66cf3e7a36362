"""Canonical JSON bytes of a ledger entry or signed message.

Keys sorted, no whitespace, UTF-8, no NaN/Infinity: for the values the ledger holds
(strings, integers, finite floats, booleans, null, lists, objects with ASCII keys) this is
one byte string per value. It is not full RFC 8785 (JCS): Python prints some floats
differently (``1e-05`` vs JCS ``1e-5``). A maintained JCS package (``rfc8785``) is not among
the project's dependencies; since verifiers hash the stored bytes, never a re-encoding,
the difference never reaches a hash.
"""

from __future__ import annotations

import json
from typing import Any

from fedmeta.errors import BadInput


def canonical_json(obj: Any) -> bytes:
    try:
        text = json.dumps(
            obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as err:
        raise BadInput(
            "ledger entry", obj, f"JSON values with finite numbers only ({err})"
        ) from None
    return text.encode()
