"""Server-side checks of a client update before it can be aggregated.

An update must decode, carry exactly the global model's tensor names and shapes in
float32, and hold only finite values; anything else is rejected with a reason and never
averaged in. The bytes are decoded against the model's shapes, so a message claiming more
values than the model has is refused before anything is allocated for them.
"""

from __future__ import annotations

import torch

from fedmeta.errors import FedmetaError
from fedmeta.federated.wire import MalformedUpdate, UnexpectedLayout, decode
from fedmeta.meta.base import Params


class InvalidUpdate(FedmetaError):
    def __init__(self, client: str, reason: str):
        self.client, self.reason = client, reason
        super().__init__(f"update from client {client} rejected: {reason}")


def check_update(client: str, data: bytes, reference: Params) -> Params:
    """The decoded update, or InvalidUpdate naming what is wrong."""
    try:
        update = decode(data, {name: tuple(t.shape) for name, t in reference.items()})
    except UnexpectedLayout as err:
        raise InvalidUpdate(client, str(err)) from None
    except MalformedUpdate as err:
        raise InvalidUpdate(client, f"malformed: {err}") from None
    if update.keys() != reference.keys():
        missing, extra = sorted(reference.keys() - update.keys()), sorted(update.keys() - reference.keys())
        raise InvalidUpdate(client, f"tensor names differ (missing {missing}, unexpected {extra})")
    for name, t in update.items():
        if t.shape != reference[name].shape:
            raise InvalidUpdate(client, f"{name}: shape {tuple(t.shape)}, expected {tuple(reference[name].shape)}")
        if t.dtype != torch.float32:
            raise InvalidUpdate(client, f"{name}: dtype {t.dtype}, expected torch.float32")
    if not torch.isfinite(torch.cat([t.reshape(-1) for t in update.values()])).all():  # one pass
        bad = next(name for name, t in update.items() if not torch.isfinite(t).all())
        raise InvalidUpdate(client, f"{bad}: non-finite values (NaN or Inf)")
    return update
