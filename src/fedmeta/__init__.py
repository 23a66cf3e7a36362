"""fedmeta: privacy-preserving federated meta-learning.

`fedmeta.run(config, ...)` runs a config from Python and returns a `fedmeta.Result`
(`fedmeta.api`); importing `fedmeta` stays cheap: `run`, `Result` and `__version__` are
looked up on first use (torch is imported by `run`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fedmeta.api import Result, run

__all__ = ["Result", "__version__", "run"]


def __getattr__(name: str) -> Any:
    if name in ("Result", "run"):
        from fedmeta import api

        return getattr(api, name)
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("fedmeta")
        except PackageNotFoundError:  # running from a source tree that is not installed
            return "0.0.0+source"
    raise AttributeError(f"module 'fedmeta' has no attribute {name!r}")
