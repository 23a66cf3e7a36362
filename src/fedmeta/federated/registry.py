"""Registries of the server's pluggable parts, and the one factory that builds them.

A registry maps the names a config may give to classes: server strategies
(`federated.server.strategy`), robust aggregation rules (`federated.robust.rule`) and
simulated attacks (`federated.attack.name`). Each class is a dataclass whose fields are the
options it takes, named like the keys of its config section (`FedAvgM.momentum` is
`federated.server.momentum`), and `build(registry, name, section)` passes it the ones it
declares. Adding a rule or a strategy is one file with its class, one line in its
registry and, if it takes an option no other class does, that key in the section
(`src/fedmeta/config/sections.py`).

A strategy, a robust rule or a network can also live outside fedmeta (docs/extending.md,
"By config"): a config names it by import path, `"package.module:Class"`, or by the short
name of an entry point in the group `fedmeta.plugins` named `<kind>.<name>` (kinds:
`strategy`, `robust`, `model`, `dataset`, `procedure`; `strategy.fednova` makes `strategy = "fednova"` usable).
`load_plugin` resolves either and checks the object's protocol; the config checks it when
it loads, and `build` builds it as it builds a registered class. Registered names come
first: a plugin cannot shadow one.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
from collections.abc import Callable, Mapping
from typing import Any

from fedmeta.errors import BadInput

PLUGIN_GROUP = "fedmeta.plugins"
PLUGIN_KINDS = {"federated.server": "strategy", "federated.robust": "robust"}  # registry section -> kind


class Registry(dict[str, type]):
    """Names -> classes configured by one config section: `section` is its dotted path
    ("federated.robust") and `key` the key that picks the class ("rule")."""

    def __init__(self, section: str, key: str, classes: Mapping[str, type]):
        super().__init__(classes)
        self.section, self.key = section, key
        self.plugin = PLUGIN_KINDS.get(section)  # the plugin kind its key also takes, if any

    def field(self, option: str) -> str:
        """The full dotted name of an option of this section ("federated.robust.trim_fraction")."""
        return f"{self.section}.{option}"


def options_of(cls: type) -> tuple[str, ...]:
    """The options a class takes: its dataclass fields (none for a class that is not a dataclass)."""
    if not dataclasses.is_dataclass(cls):
        return ()
    return tuple(f.name for f in dataclasses.fields(cls))


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [""])[0][:160]
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _instances_callable(obj: Any) -> bool:
    return isinstance(obj, type) and any("__call__" in vars(k) for k in obj.__mro__ if k is not object)


def _has_init_apply(obj: Any) -> bool:
    return isinstance(obj, type) and all(callable(getattr(obj, m, None)) for m in ("init", "apply"))


# kind -> (what its import path names, the check of the object, what the check asks for)
PROTOCOLS: dict[str, tuple[str, Callable[[Any], bool], str]] = {
    "strategy": ("Class", _has_init_apply,
                 "a class with init(params) -> state and apply(params, delta, state) -> (params, state)"),
    "robust": ("Class", _instances_callable, "a class whose instances are callable (updates, weights) -> update"),
    "model": ("factory", callable, "a callable factory (x_shape, n_outputs) -> nn.Module"),
    "dataset": ("factory", callable, "a callable factory (cfg, generator) -> FederatedData"),
    "procedure": ("factory", callable, "a factory (model, kind) -> an object with step(params, anchor, episodes) -> params"),
}


def plugins(kind: str) -> dict[str, Any]:
    """The entry points of group `fedmeta.plugins` named `<kind>.<name>`, by short name."""
    found: dict[str, Any] = {}
    for point in importlib.metadata.entry_points(group=PLUGIN_GROUP):
        prefix, dot, short = point.name.partition(".")
        if dot and prefix == kind and short:
            found.setdefault(short, point)
    return found


def import_object(path: str) -> Any:
    """The object `"package.module:name"` names (`name` may be dotted: `Outer.Inner`); a
    LookupError whose message says what failed."""
    module, sep, attr = path.partition(":")
    if not sep or not module.strip() or not attr.strip():
        raise LookupError("a 'package.module:name' import path")
    try:
        obj = importlib.import_module(module)
    except Exception as err:
        raise LookupError(f"cannot import {module} ({_first_line(err)})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(f"module {module} has no attribute {attr}") from None
    return obj


def load_plugin(kind: str, name: str, field: str, known: tuple[str, ...] = ()) -> Any:
    """The object of kind `kind` ("strategy", "robust", "model") that `name` gives: an
    import path `"package.module:name"`, or the short name of an entry point `<kind>.<name>`
    in group `fedmeta.plugins`; checked against the kind's protocol. Anything else is a
    one-line `BadInput` naming `field`; `known` are the names the field also takes."""
    what, check, accepted = PROTOCOLS[kind]
    if ":" in name:
        try:
            obj = import_object(name)
        except LookupError as err:
            raise BadInput(field, name, str(err)) from None
    else:
        point = plugins(kind).get(name)
        if point is None:
            listed = ", ".join(repr(n) for n in known)
            raise BadInput(field, name, f"{'one of ' + listed + ', ' if listed else ''}a 'package.module:{what}' "
                                        f"import path or the name of a {PLUGIN_GROUP} entry point '{kind}.<name>'")
        try:
            obj = point.load()
        except Exception as err:
            raise BadInput(field, name, f"cannot load entry point {point.name} = {point.value} ({_first_line(err)})") from None
    if not check(obj):
        got = obj.__name__ if isinstance(obj, type) else type(obj).__name__
        raise BadInput(field, name, f"{accepted} (got {'class ' if isinstance(obj, type) else 'a '}{got})")
    return obj


def resolve(registry: Registry, name: str) -> type:
    """The class `name` picks: a registered one, else (where the registry takes plugins) the
    one its import path or entry point gives (`load_plugin`)."""
    if name in registry:
        return registry[name]
    field = registry.field(registry.key)
    if registry.plugin is None:
        raise BadInput(field, name, "one of " + ", ".join(registry))
    return load_plugin(registry.plugin, name, field, tuple(registry))


def build(registry: Registry, name: str, section: Any = None) -> Any:
    """`registry[name]` built from `section`, naming the full dotted field of any bad input.

    `section` is a config section (a pydantic model such as `cfg.federated.robust`): every
    field the class declares is read from the section's key of the same name, None meaning
    the class default, and the section's other keys (options of other classes) are left
    alone. Or a mapping of options, each of which the class must declare (code and tests
    that build one directly); None builds the class with its defaults.

    `name` may also be a plugin (`resolve`): its dataclass fields named like the section's
    keys are read from it, its other fields keep their defaults, and a class that is not a
    dataclass is built without options.
    """
    cls = resolve(registry, name)
    plugin = name not in registry
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
        if missing and not plugin:
            raise TypeError(f"{cls.__name__} takes {', '.join(missing)}, which [{registry.section}] lacks")
        values = {f: getattr(section, f) for f in fields if f not in missing}
    values = {k: v for k, v in values.items() if v is not None}
    if not plugin:
        return cls(**values)
    try:
        return cls(**values)
    except Exception as err:
        raise BadInput(registry.field(registry.key), name, f"a class built from [{registry.section}]; "
                                                           f"building it raised {_first_line(err)}") from None
