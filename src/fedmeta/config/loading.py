"""TOML in, overrides applied, validated: `load_config`, and pydantic's errors turned into
one line naming the full dotted field, the value and what is accepted."""

from __future__ import annotations

import difflib
import tomllib
import typing
import warnings
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from fedmeta.config.layout import (
    DEPRECATED,
    _both,
    _is_flat,
    _targets,
    deprecation_notice,
    move_deprecated,
)
from fedmeta.config.sections import MAX_SEED, MAX_THREADS, Config
from fedmeta.errors import ConfigDeprecationWarning, ConfigError

_ACCEPTED = {  # what a key takes, where pydantic's own message would be vaguer
    "run.seed": f"an integer in 0..{MAX_SEED} (2^63 - 1)",
    "privacy.noise_seed": f"an integer in 0..{MAX_SEED} (2^63 - 1)",
    "run.threads": f"an integer in 1..{MAX_THREADS} (torch threads)",
}
_TYPES = {  # pydantic error type -> what a TOML value of that key must look like
    "int_type": "an integer (e.g. 3; not \"3\", 3.0 or true)",
    "float_type": "a number (e.g. 0.5; not a string or true)",
    "finite_number": "a finite number (not inf or nan)",
    "bool_type": "true or false",
    "string_type": "a string in quotes",
    "list_type": "a list [...]",
    "dict_type": "a table { ... }",
    "model_type": "a table [section]",
    "model_attributes_type": "a table [section]",
}


def _section_of(loc: list[str]) -> type[BaseModel]:
    section: type[BaseModel] = Config
    for part in loc:
        ann = section.model_fields[part].annotation
        section = next(a for a in (*typing.get_args(ann), ann) if isinstance(a, type) and issubclass(a, BaseModel))
    return section


def _field_error(err: ValidationError) -> ConfigError:
    """The first pydantic error as one ConfigError naming the dotted field."""
    first = err.errors()[0]
    loc = [str(p) for p in first["loc"]]
    field = ".".join(loc) or "config"
    if first["type"] == "extra_forbidden":
        where = ".".join(loc[:-1])
        meant = {k: f"{where}.{k}" if where else k for k in _section_of(loc[:-1]).model_fields}
        if loc[:1] == ["federated"]:  # a flat name (or a typo of one) inside [federated] or a section of it
            meant = {**{old: f"federated.{new}" for old, new in DEPRECATED.items()}, **meant}
        keys, typed = list(meant), loc[-1]
        prefixed = [k for k in keys if k.startswith(typed) or typed.startswith(k)]  # "round", "feder"
        near = difflib.get_close_matches(typed, prefixed, n=1, cutoff=0) or difflib.get_close_matches(typed, keys, n=1, cutoff=0.6)
        if near:
            hint = f"did you mean {meant[near[0]]}?"
        else:
            hint = f"no key of [{where}] is close; see configs/ or README.md" if where else "no section is close; see configs/ or README.md"
        return ConfigError(field, first["input"], f"unknown key; {hint}")
    ctx = first.get("ctx", {})
    if isinstance(ctx.get("error"), ConfigError):
        return ctx["error"]
    accepted = _ACCEPTED.get(field) or _TYPES.get(first["type"]) or first["msg"].replace("Input should be ", "")
    return ConfigError(field, first.get("input"), accepted)


def _parse_override(item: str) -> tuple[list[str], Any]:
    try:
        item.encode("utf-8")
    except UnicodeEncodeError as err:  # argv bytes that are not UTF-8 arrive as surrogates
        raise ConfigError("--set", item, f"UTF-8 text (character {err.start} is not)") from None
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError("--set", item, "KEY=VALUE with a dotted key, e.g. meta.inner_lr=0.01")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError as err:
        if raw.strip()[:1] in ("'", '"', "[", "{"):  # meant as a TOML string, list or table
            reason = str(err).replace("(at line 1, ", "(at ")
            raise ConfigError(key.strip(), raw, f"a complete TOML value: {reason}") from None
        value = raw  # a bare word: treat it as a string
    return key.strip().split("."), value


def _check_server_key(server_key: str | None) -> None:
    """The ledger's signing key loads, or can be created where it is to go (a run creates
    `$FEDMETA_HOME/server_key.pem`, or `ledger.server_key`, on first use)."""
    from fedmeta.errors import BadInput
    from fedmeta.federated.record import default_server_key
    from fedmeta.ledger.keys import load_private_key

    field = "ledger.server_key"
    path = Path(server_key).expanduser() if server_key else default_server_key()
    where = "" if server_key else " (unset: $FEDMETA_HOME/server_key.pem, FEDMETA_HOME default ~/.fedmeta)"
    if path.exists():
        try:
            load_private_key(path)
        except BadInput as err:
            raise ConfigError(field, str(path), f"an Ed25519 private key in PEM{where} ({err.accepted})") from None
        return
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(field, str(path), f"a key file, or a path where one can be created{where}; {parent} is not a folder")


def _check_paths(cfg: Config) -> None:
    """The folders a config names exist, before anything is written."""
    if cfg.data.data_dir is not None and not Path(cfg.data.data_dir).expanduser().is_dir():
        raise ConfigError("data.data_dir", cfg.data.data_dir, "an existing folder (--data-dir)")
    if cfg.data.name == "omniglot" and cfg.data.data_dir is not None:  # it holds Omniglot
        from fedmeta.data.omniglot import resolve_data_dir

        resolve_data_dir(cfg.data.data_dir)
    if cfg.ledger.enabled and cfg.federated is not None:
        _check_server_key(cfg.ledger.server_key)
    keys = cfg.ledger.client_keys
    if keys is not None and not Path(keys).expanduser().is_dir():
        raise ConfigError("ledger.client_keys", keys,
                          "an existing folder of <client id>.pem keys (made by `fedmeta keys create --out`)")


DEMO = Path(__file__).parent.parent / "demo.toml"


def _notify(notice: str) -> None:
    warnings.warn(ConfigDeprecationWarning(notice), stacklevel=3)


def load_config(path: str | Path | None = None, overrides: list[str] = (), *, check_paths: bool = True,
                summarize_notices: bool = False) -> Config:
    """Read TOML (the built-in demo when `path` is None), apply overrides, validate; with
    `check_paths`, also that the folders it names (data, client keys) exist here.

    A key of the flat [federated] layout, in the file or an override, moves to its section
    with a ConfigDeprecationWarning naming the new key (`summarize_notices`: one warning for
    the whole file, for a run folder's config.toml, which is never rewritten); an override
    of the old name replaces the file's value of the new one."""
    raw: dict[str, Any] = {}
    if path is None:
        raw = tomllib.loads(DEMO.read_text())
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError("config", str(p), "path to an existing TOML file")
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as err:
            raise ConfigError("config", str(p), f"a UTF-8 TOML file (byte {err.start} is {err.object[err.start]:#04x})") from None
        except tomllib.TOMLDecodeError as err:
            raise ConfigError("config", str(p), f"valid TOML ({err})") from None
    moved: list[str] = []
    if isinstance(raw.get("federated"), dict):  # the file's flat keys, before any override
        raw["federated"], moved = move_deprecated(raw["federated"])
    set_by: dict[str, tuple[str, Any]] = {}  # key an override set -> (the name it used, the value)
    for item in overrides:
        keys, value = _parse_override(item)
        name, targets = ".".join(keys), [keys]
        if len(keys) == 2 and keys[0] == "federated" and _is_flat(keys[1], value):
            fed = raw["federated"] if isinstance(raw.get("federated"), dict) else {}
            targets = [["federated", *t.split(".")] for t in _targets(keys[1], fed)]
            moved.append(keys[1])
        for target in targets:
            key = ".".join(target)
            first, first_value = set_by.setdefault(key, (name, value))
            if first != name:  # the flat and the sectioned name of one key, both given
                flat, flat_value = (first, first_value) if first != key else (name, value)
                raise _both(flat.split(".")[1], flat_value, key.removeprefix("federated."))
            node = raw
            for k in target[:-1]:
                node = node.setdefault(k, {})
                if not isinstance(node, dict):
                    raise ConfigError(".".join(keys), value, f"{k} is a value, not a section")
            node[target[-1]] = value
    if moved and summarize_notices:
        more = f", and {len(moved) - 1} more" if len(moved) > 1 else ""
        _notify(f"config: {path} is in the flat [federated] layout (federated.{moved[0]} is now "
                f"federated.{DEPRECATED[moved[0]]}{more}); it is read in sections and left as written")
    else:
        for old in dict.fromkeys(moved):
            _notify(deprecation_notice(old))
    try:
        cfg = Config.model_validate(raw)
    except ValidationError as err:
        raise _field_error(err) from None
    if check_paths:
        _check_paths(cfg)
    return cfg
