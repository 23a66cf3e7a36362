"""Server-side checks of a client update before it can be aggregated.

An update must decode, carry exactly the global model's tensor names and shapes in
float32, and hold only finite values; anything else is rejected with a reason and never
averaged in. The bytes are decoded against the model's shapes, so a message claiming more
values than the model has is refused before anything is allocated for them.
"""

from __future__ import annotations

from fedmeta.errors import FedmetaError
from fedmeta.federated.wire import MalformedUpdate, NonFiniteValues, UnexpectedLayout, decode
from fedmeta.meta.base import Params


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
