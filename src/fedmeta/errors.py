"""Exceptions the library raises; the CLI turns each into one line and an exit code.

`BadInput` and its subclasses mean the user asked for something that cannot run (exit 2);
anything else raised during a run is a failure (exit 1) that leaves the run folder resumable.
`ConfigDeprecationWarning` is not an error: a config key that still loads but has a new
name; the CLI prints each as one line on stderr.
"""

from __future__ import annotations

from typing import Any


class FedmetaError(Exception):
    """Base class of every error fedmeta raises on purpose."""


class BadInput(FedmetaError, ValueError):
    """Input that cannot be used: names the field, the value and what is accepted."""

    def __init__(self, field: str, value: Any, accepted: str):
        self.field, self.value, self.accepted = field, value, accepted
        super().__init__(f"{field} = {value!r}: {accepted}")


class ConfigError(BadInput):
    """A configuration value (file, override or incompatible combination) is invalid."""


class DataError(BadInput):
    """A dataset path is missing or malformed, or cannot provide what was asked."""


class VerificationError(FedmetaError):
    """A hash, proof or signature does not check out; the message says expected vs got."""

    def __init__(self, what: str, expected: Any, got: Any):
        self.what, self.expected, self.got = what, expected, got
        super().__init__(f"{what}: expected {expected}, got {got}")


class ConfigDeprecationWarning(FutureWarning):
    """A config key that loads under an old name: the message, one line, names the new key.

    A FutureWarning, so Python shows it by default (it is meant for the people who write
    configs, not only for developers)."""


def qualified_name(obj: Any) -> str:
    """`module.qualname` of a function or class, or of an object's class: how a part given
    from Python is named in provenance and errors (one line, never a multi-line repr)."""
    target = obj if isinstance(obj, type) or (callable(obj) and hasattr(obj, "__qualname__")) else type(obj)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', type(target).__name__)}"


def shown(obj: Any) -> Any:
    """A value for a one-line `BadInput`: plain values as they are, anything else by name."""
    return obj if isinstance(obj, (bool, int, float, str, type(None))) else qualified_name(obj)
