"""The user's own table as a federated dataset (`data.name = "table"`).

A CSV or Parquet file with one row per example: each distinct value of `data.client_column`
is a client (its natural owner; no Dirichlet or shards), `data.label_column` is the target,
and the features are `data.features` or every other column. Each client becomes an
`ExampleClient` whose episodes come from its own rows only.

What every client shares (the schema): the column names, each column's kind, the category
vocabulary of each categorical column (its one-hot encoding) and, for classification, the
label set. What stays with each client: its rows and the statistics of its rows — numeric
features are standardized with the mean and standard deviation of the client's own rows,
never with pooled ones, which would mix every owner's data into every other owner's inputs.

Every problem with the file (missing, unreadable, a column that is not there or cannot be
encoded, a missing value, a client too small for one episode, a count that does not match
the config) is a `ConfigError` naming the dotted field, raised before a run folder exists.
`docs/data.md` describes the options.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmeta.data.federated import ExampleClient, FederatedData
from fedmeta.errors import ConfigError

MISSING = frozenset({"", "na", "n/a", "nan", "null"})  # cells read as missing (stripped, any case)
MAX_CATEGORIES = 256  # a categorical feature with more distinct values is refused (an ID or free text)
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class TableData(FederatedData):
    """`FederatedData` of a table, with its schema: what the clients share, not their rows.

    `schema`: {"file", "sha256", "task", "client_column", "label_column", "columns": [{"name",
    "kind", "categories"?}], "labels" (classification: label values in index order),
    "n_features" (the width of an encoded example)}."""

    schema: dict[str, Any]


@dataclass(frozen=True)
class _Table:
    columns: list[str]
    cells: dict[str, list[str | None]]  # column -> its cells, None where missing
    where: list[str]  # each row's place in the file, for messages ("line 18", "row 17")
    sha256: str


def _show(values: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")


def _cell(value: Any) -> str | None:
    """A cell as text, None when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return None if text.lower() in MISSING else text


def _read_csv(raw: bytes, shown: str) -> tuple[list[str], list[list[str]], list[str]]:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError("data.path", shown, f"a UTF-8 CSV file (byte {err.start} is {raw[err.start]:#04x})") from None
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)
    rows, where = [], []
    try:
        header = next(reader, None)
        for row in reader:
            if not row or all(not c.strip() for c in row):  # a blank line
                continue
            rows.append(row)
            where.append(f"line {reader.line_num}")
    except csv.Error as err:
        raise ConfigError("data.path", shown, f"a readable CSV file (line {reader.line_num}: {err})") from None
    if not header:
        raise ConfigError("data.path", shown, "a CSV file with a header row of column names (the file is empty)")
    header = [h.strip() for h in header]
    for row, at in zip(rows, where):
        if len(row) != len(header):
            raise ConfigError("data.path", shown, f"a CSV file whose rows have the header's {len(header)} fields "
                                                  f"({at} has {len(row)})")
    return header, rows, where


def _read_parquet(path: Path, shown: str) -> tuple[list[str], list[list[Any]], list[str]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError("data.path", shown, "a CSV file, or install pyarrow to read Parquet "
                                              "(pip install pyarrow)") from None
    try:
        table = pq.read_table(path).to_pydict()
    except Exception as err:  # pyarrow's errors share no base class worth naming here
        raise ConfigError("data.path", shown, f"a readable Parquet file ({type(err).__name__}: {err})".splitlines()[0]) from None
    header = [str(c) for c in table]
    n = len(next(iter(table.values()), []))
    rows = [[table[c][i] for c in table] for i in range(n)]
    return header, rows, [f"row {i + 1}" for i in range(n)]


def read_table(path: str) -> _Table:
    """The file's columns, cells (None where missing) and SHA-256; `ConfigError("data.path")`
    when it is missing or cannot be read."""
    p = Path(path).expanduser()
    kind = SUFFIXES.get(p.suffix.lower())
    if kind is None:
        raise ConfigError("data.path", path, "a .csv or .parquet file")
    if not p.is_file():
        raise ConfigError("data.path", path, "an existing CSV or Parquet file (a relative path starts at the working directory)")
    try:
        raw = p.read_bytes()
    except OSError as err:
        raise ConfigError("data.path", path, f"a readable file ({err.strerror or err})") from None
    header, rows, where = _read_csv(raw, path) if kind == "csv" else _read_parquet(p, path)
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise ConfigError("data.path", path, f"a table whose column names are distinct ({name!r} appears twice)")
        seen.add(name)
    if not rows:
        raise ConfigError("data.path", path, "a table with at least one row below the header")
    cells = {name: [_cell(row[j]) for row in rows] for j, name in enumerate(header)}
    return _Table(header, cells, where, hashlib.sha256(raw).hexdigest())


def _numbers(cells: list[str | None]) -> list[float] | None:
    """The cells as floats, or None when one is not a number."""
    out = []
    for c in cells:
        try:
            out.append(float(c))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    return out


def _ordered(values: set[str]) -> list[str]:
    """Distinct values sorted as numbers when all are numbers, else as text."""
    if _numbers(list(values)) is not None:
        return sorted(values, key=lambda v: (float(v), v))
    return sorted(values)


def _columns(data: Any, table: _Table) -> list[str]:
    """The feature columns: `data.features` (each present) or every other column."""
    present = f"the columns of {Path(data.path).name} are {_show(table.columns, 40)}"
    for field in ("client_column", "label_column"):
        name = getattr(data, field)
        if name not in table.cells:
            raise ConfigError(f"data.{field}", name, f"a column of the table: {present}")
    if data.features is None:
        features = [c for c in table.columns if c not in (data.client_column, data.label_column)]
        if not features:
            raise ConfigError("data.path", data.path, f"a table with feature columns besides data.client_column and "
                                                      f"data.label_column ({present})")
        return features
    for name in data.features:
        if name not in table.cells:
            raise ConfigError("data.features", name, f"a column of the table: {present}")
    return list(data.features)


def _drop_missing(data: Any, table: _Table, used: list[str]) -> list[int]:
    """The rows to keep: all, unless a used column has a missing value (refused, or the row
    dropped with `data.missing = "drop"`)."""
    keep = []
    for i in range(len(table.where)):
        gap = next((c for c in used if table.cells[c][i] is None), None)
        if gap is None:
            keep.append(i)
        elif data.missing != "drop":
            raise ConfigError("data.missing", data.missing or "refuse",
                              f"column {gap!r} has no value at {table.where[i]} of {Path(data.path).name}; "
                              "data.missing = 'drop' drops such rows (values are never imputed)")
    if not keep:
        raise ConfigError("data.missing", data.missing, f"every row of {Path(data.path).name} misses a value in "
                                                        f"{_show(used)}, so none is left")
    return keep


def _encode_schema(data: Any, table: _Table, features: list[str], rows: list[int]) -> list[dict[str, Any]]:
    """Each feature column's kind (numeric or categorical) and category vocabulary."""
    out = []
    for name in features:
        cells = [table.cells[name][i] for i in rows]
        numbers = _numbers(cells)
        if numbers is not None:
            bad = next((i for i, v in zip(rows, numbers) if not math.isfinite(v)), None)
            if bad is not None:
                raise ConfigError("data.features", name, f"finite numbers: column {name!r} holds "
                                                         f"{table.cells[name][bad]!r} at {table.where[bad]}")
            out.append({"name": name, "kind": "numeric"})
            continue
        categories = _ordered(set(cells))  # type: ignore[arg-type]
        if len(categories) > MAX_CATEGORIES:
            raise ConfigError("data.features", name, f"a column to one-hot encode: {name!r} holds {len(categories)} "
                                                     f"distinct values (at most {MAX_CATEGORIES}); list data.features without it")
        out.append({"name": name, "kind": "categorical", "categories": categories})
    return out


def _labels(data: Any, table: _Table, rows: list[int]) -> tuple[list[str] | None, np.ndarray]:
    """Classification: the label set (sorted, shared) and each row's index in it;
    regression: None and each row's float target."""
    name = data.label_column
    cells = [table.cells[name][i] for i in rows]
    if (data.task or "classification") == "regression":
        numbers = _numbers(cells)
        bad = None
        if numbers is None:
            bad = next(i for i in rows if _numbers([table.cells[name][i]]) is None)
        elif not all(math.isfinite(v) for v in numbers):
            bad = next(i for i, v in zip(rows, numbers) if not math.isfinite(v))
        if bad is not None:
            raise ConfigError("data.label_column", name, f"finite numbers with data.task = 'regression': column {name!r} "
                                                         f"holds {table.cells[name][bad]!r} at {table.where[bad]}")
        return None, np.asarray(numbers, dtype=np.float64)
    labels = _ordered(set(cells))  # type: ignore[arg-type]
    if len(labels) < 2:
        raise ConfigError("data.label_column", name, f"a column with at least two classes (every row of {name!r} "
                                                     f"holds {labels[0]!r})")
    index = {v: k for k, v in enumerate(labels)}
    return labels, np.asarray([index[c] for c in cells], dtype=np.int64)  # type: ignore[index]


def _split(data: Any, fed: Any, clients: list[str]) -> tuple[list[str], list[str]]:
    """Training and held-out client values: `data.held_out` (named), else the last
    `federated.held_out_clients` in sorted order; `federated.n_clients` must count the rest."""
    column = data.client_column
    if data.held_out is not None:
        for value in data.held_out:
            if value not in clients:
                raise ConfigError("data.held_out", value, f"a value of column {column!r}: {_show(clients)}")
        held = list(data.held_out)
    else:
        n = fed.held_out_clients
        if n >= len(clients):
            raise ConfigError("federated.held_out_clients", n, f"between 0 and {len(clients) - 1}: column {column!r} "
                                                               f"holds {len(clients)} clients")
        held = clients[len(clients) - n:]
    train = [c for c in clients if c not in held]
    if fed.n_clients != len(train):
        raise ConfigError("federated.n_clients", fed.n_clients,
                          f"{len(train)}, the table's training clients: column {column!r} holds {len(clients)} "
                          f"clients, {len(held)} of them held out")
    return train, held


def _standardized(values: np.ndarray) -> np.ndarray:
    """(x − mean) / std of one client's own rows (std 0: the feature is 0 throughout)."""
    mean, std = values.mean(axis=0), values.std(axis=0)
    return (values - mean) / np.where(std > 0, std, 1.0)


def encode_client(table: _Table, rows: list[int], columns: list[dict[str, Any]]) -> np.ndarray:
    """One client's rows as a float matrix: numeric features standardized by this client's
    own statistics, categorical features one-hot over the shared vocabulary."""
    parts = []
    for col in columns:
        cells = [table.cells[col["name"]][i] for i in rows]
        if col["kind"] == "numeric":
            parts.append(_standardized(np.asarray([float(c) for c in cells], dtype=np.float64))[:, None])  # type: ignore[arg-type]
        else:
            index = {v: k for k, v in enumerate(col["categories"])}
            onehot = np.zeros((len(rows), len(index)))
            onehot[np.arange(len(rows)), [index[c] for c in cells]] = 1.0
            parts.append(onehot)
    return np.concatenate(parts, axis=1)


def federated_table(data: Any, fed: Any) -> TableData:
    """The clients of a table: one `ExampleClient` per value of `data.client_column`."""
    table = read_table(data.path)
    features = _columns(data, table)
    rows = _drop_missing(data, table, [data.client_column, data.label_column, *features])
    columns = _encode_schema(data, table, features, rows)
    labels, targets = _labels(data, table, rows)
    owners: dict[str, list[int]] = {}
    for i, pos in enumerate(rows):
        owners.setdefault(table.cells[data.client_column][pos], []).append(i)  # type: ignore[arg-type]
    train, held = _split(data, fed, _ordered(set(owners)))
    support, query = fed.partition.support_size, fed.partition.query_size
    for value in (*train, *held):
        if len(owners[value]) < support + query:
            dropped = " (after dropping rows with missing values)" if len(rows) < len(table.where) else ""
            raise ConfigError("federated.partition.support_size", support,
                              f"support_size + query_size = {support + query} at most the rows of every client: "
                              f"client {value!r} holds {len(owners[value])} rows{dropped}")
    regression = labels is None
    kind = "regression" if regression else "classification"
    n_outputs = 1 if regression else len(labels)

    def client(value: str) -> ExampleClient:
        mine = owners[value]
        x = torch.from_numpy(encode_client(table, [rows[i] for i in mine], columns)).float()
        y = torch.from_numpy(targets[mine])
        y = y.float()[:, None] if regression else y
        return ExampleClient(x, y, support, query, kind, n_outputs)

    width = sum(1 if c["kind"] == "numeric" else len(c["categories"]) for c in columns)
    schema = {
        "file": Path(data.path).name,
        "sha256": table.sha256,
        "task": kind,
        "client_column": data.client_column,
        "label_column": data.label_column,
        "columns": columns,
        "labels": labels,
        "n_features": width,
    }
    return TableData([client(v) for v in train], [client(v) for v in held], kind, n_outputs, (width,), schema)
