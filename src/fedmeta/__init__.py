"""fedmeta: privacy-preserving federated meta-learning.

`fedmeta.run(config, ...)` runs a config from Python and returns a `fedmeta.Result`
(`fedmeta.api`); importing `fedmeta` stays cheap (torch is imported by `run`).
"""

from importlib.metadata import PackageNotFoundError, version

from fedmeta.api import Result, run

try:
    __version__ = version("fedmeta")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"

__all__ = ["Result", "__version__", "run"]
