"""Registries of the server's pluggable parts, and the one factory that builds them.

A registry maps the names a config may give to classes: server strategies
(`federated.server.strategy`), robust aggregation rules (`federated.robust.rule`) and
simulated attacks (`federated.attack.name`). Each class is a dataclass whose fields are the
options it takes, named like the keys of its config section (`FedAvgM.momentum` is
`federated.server.momentum`), and `build(registry, name, section)` passes it the ones it
declares. Adding a rule or a strategy is one file with its class, one line in its
registry and, if it takes an option no other class does, that key in the section
(`src/fedmeta/config/sections.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from fedmeta.errors import BadInput


class Registry(dict[str, type]):
    """Names -> classes configured by one config section: `section` is its dotted path
    ("federated.robust") and `key` the key that picks the class ("rule")."""

    def __init__(self, section: str, key: str, classes: Mapping[str, type]):
        super().__init__(classes)
        self.section, self.key = section, key

    def field(self, option: str) -> str:
        """The full dotted name of an option of this section ("federated.robust.trim_fraction")."""
        return f"{self.section}.{option}"


def options_of(cls: type) -> tuple[str, ...]:
    """The options a registered class takes: its dataclass fields."""
    return tuple(f.name for f in dataclasses.fields(cls))


def build(registry: Registry, name: str, section: Any = None) -> Any:
    """`registry[name]` built from `section`, naming the full dotted field of any bad input.

    `section` is a config section (a pydantic model such as `cfg.federated.robust`): every
    field the class declares is read from the section's key of the same name, None meaning
    the class default, and the section's other keys (options of other classes) are left
    alone. Or a mapping of options, each of which the class must declare (code and tests
    that build one directly); None builds the class with its defaults.
    """
    if name not in registry:
        raise BadInput(registry.field(registry.key), name, "one of " + ", ".join(registry))
    cls = registry[name]
    fields = options_of(cls)
    if section is None:
        values: dict[str, Any] = {}
    elif isinstance(section, Mapping):
        for option, value in section.items():
            if option not in fields:
                takes = ", ".join(fields) or "no options"
                raise BadInput(registry.field(option), value, f"not an option of {registry.key} {name!r}, which takes {takes}")
        values = dict(section)
    else:
        missing = [f for f in fields if not hasattr(section, f)]
        if missing:
            raise TypeError(f"{cls.__name__} takes {', '.join(missing)}, which [{registry.section}] lacks")
        values = {f: getattr(section, f) for f in fields}
    return cls(**{k: v for k, v in values.items() if v is not None})
