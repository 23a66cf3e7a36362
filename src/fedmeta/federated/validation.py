"""Server-side checks of a client update before it can be aggregated.

An update must decode, carry exactly the global model's tensor names and shapes in
float32, and hold only finite values; anything else is rejected with a reason and never
averaged in. The bytes are decoded against the model's shapes, so a message claiming more
values than the model has is refused before anything is allocated for them.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch

from fedmeta.errors import FedmetaError
from fedmeta.federated.wire import (
    MalformedUpdate,
    NonFiniteValues,
    UnexpectedLayout,
    decode,
    decode_rows,
)
from fedmeta.meta.base import Params
from fedmeta.params import PerClient, Stacked


class InvalidUpdate(FedmetaError):
    def __init__(self, client: str, reason: str):
        self.client, self.reason = client, reason
        super().__init__(f"update from client {client} rejected: {reason}")


def check_update(client: str, data: bytes, reference: Params) -> Params:
    """The decoded update, or InvalidUpdate naming what is wrong."""
    try:
        return decode(data, {name: tuple(t.shape) for name, t in reference.items()})
    except (UnexpectedLayout, NonFiniteValues) as err:  # decode checks names, shapes, float32 and finiteness
        raise InvalidUpdate(client, str(err)) from None
    except MalformedUpdate as err:
        raise InvalidUpdate(client, f"malformed: {err}") from None


def check_updates(data: Mapping[int, bytes], reference: Params) -> tuple[PerClient, dict[int, InvalidUpdate]]:
    """`check_update` of each client's bytes: the valid updates, by client (stacked when the
    messages share one header of raw values, as a round's clients do), and the others' errors."""
    expected = {name: tuple(t.shape) for name, t in reference.items()}
    clients, out, errors = list(data), PerClient(), {}
    rows = decode_rows(list(data.values()), expected)
    if rows is None:
        valid = {}
        for c in clients:
            try:
                valid[c] = check_update(str(c), data[c], reference)
            except InvalidUpdate as err:
                errors[c] = err
        out.add(list(valid), list(valid.values()))
        return out, errors
    arrays, finite = rows
    ok = finite.tolist()
    for c in (c for c, good in zip(clients, ok, strict=True) if not good):
        try:
            check_update(str(c), data[c], reference)
        except InvalidUpdate as err:  # always: its values are not all finite
            errors[c] = err
    out.add([c for c, good in zip(clients, ok, strict=True) if good],
            Stacked({name: torch.from_numpy(a) for name, a in arrays.items()}))
    return out, errors
