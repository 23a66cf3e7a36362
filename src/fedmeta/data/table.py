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

The schema can be written in the config (`data.clients`, `data.columns`, `data.labels`):
then every file is checked against it, and a deployed server runs on it alone — the rows
stay on their owners' machines (`owner_table` reads one owner's file on its supernode).
Unset, it is read from the files, and a run's `config.toml` records what was read.

Every problem with the file (missing, unreadable, a column that is not there or cannot be
encoded, a value outside the schema, a missing value, a client too small for one episode,
a count that does not match the config) is a `ConfigError` naming the dotted field, raised
before a run folder exists. `docs/data.md` describes the options.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmeta.data.base import Kind, TaskBatch
from fedmeta.data.federated import ExampleClient, FederatedData
from fedmeta.errors import ConfigError, FedmetaError

MISSING = frozenset({"", "na", "n/a", "nan", "null"})  # cells read as missing (stripped, any case)
MAX_CATEGORIES = 256  # a categorical feature with more distinct values is refused (an ID or free text)
SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class OwnedClient:
    """A client whose rows stay on its owner's machine: all a deployed server (or another
    owner's supernode) knows of it. Its aggregation weight comes with its update."""

    name: str
    kind: Kind
    n_outputs: int
    x_shape: tuple[int, ...]
    n_examples: int = 1

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        raise FedmetaError(f"client {self.name!r}: its rows are on its owner's machine, not here")


@dataclass(frozen=True)
class TableData(FederatedData):
    """`FederatedData` of a table, with its schema: what the clients share, not their rows.

    `schema`: {"task", "client_column", "label_column", "clients" (every owner, in id
    order), "columns": [{"name", "kind", "categories"?}], "labels" (classification: the
    classes in index order, else None)}; `files`: the SHA-256 of each file read (none on a
    deployed server); `owner`: on an owner's machine, ("train" or "test", its index);
    `source`: where a `data.source` table came from."""

    schema: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    owner: tuple[str, int] | None = None
    source: dict[str, Any] | None = None  # a `data.source` table's provenance (data/sources.py)

    @property
    def remote(self) -> bool:
        """Whether no rows are here (a deployed server: the owners evaluate on theirs)."""
        return not self.files

    @property
    def n_features(self) -> int:
        return self.x_shape[0]

    def client_at(self, split: str, index: int) -> ExampleClient | OwnedClient:
        """Training client `index` (split "train") or held-out client `index` ("test")."""
        return (self.train if split == "train" else self.held_out)[index]


def embedded_columns(data: Any) -> list[tuple[int, int]]:
    """A table's index columns as (position in the encoded row, vocabulary size), for the
    model's embeddings; none for any other dataset."""
    out, position = [], 0
    for col in getattr(data, "schema", {}).get("columns", []):
        if col["kind"] == "index":
            out.append((position, len(col["categories"])))
        position += len(col["categories"]) if col["kind"] == "categorical" else 1
    return out


def schema_sha256(schema: dict[str, Any]) -> str:
    """The SHA-256 of a schema's canonical JSON (sorted keys, no spaces)."""
    return hashlib.sha256(json.dumps(schema, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


@dataclass(frozen=True)
class _Table:
    columns: list[str]
    cells: dict[str, list[str | None]]  # column -> its cells, None where missing
    where: list[str]  # each row's place, for messages ("line 18 of a.csv", "row 17 of b.parquet")
    files: dict[str, str]  # each file read -> its SHA-256


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


def _read_file(path: str) -> tuple[list[str], list[list[Any]], list[str], str]:
    """One file's header, rows, each row's place and SHA-256; `ConfigError("data.path")`
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
    return header, rows, [f"{w} of {p.name}" for w in where], hashlib.sha256(raw).hexdigest()


def read_table(paths: str | list[str]) -> _Table:
    """The rows of one file or of several with the same columns (in any order), one table."""
    paths = [paths] if isinstance(paths, str) else list(paths)
    cells: dict[str, list[str | None]] = {}
    where, files = [], {}
    for path in paths:
        header, rows, places, sha = _read_file(path)
        if cells and set(header) != set(cells):
            first = Path(paths[0]).name
            raise ConfigError("data.path", path, f"a table with the columns of {first}: {_show(sorted(cells), 40)} "
                                                 f"(it has {_show(sorted(header), 40)})")
        for j, name in enumerate(header):
            cells.setdefault(name, []).extend(_cell(row[j]) for row in rows)
        where += places
        files[path] = sha
    return _Table(list(cells), cells, where, files)


def source_table(data: Any) -> tuple[_Table, dict[str, Any]]:
    """A `data.source` table (data/sources.py) as the rows of a file, restricted to the owners
    of `data.clients` where given (a slice), and its provenance."""
    from fedmeta.data.sources import load_source

    source = load_source(data.source)
    frame = source.frame
    if data.clients is not None:
        owners = set(frame[data.client_column].astype(str))
        absent = next((c for c in data.clients if c not in owners), None)
        if absent is not None:
            raise ConfigError("data.clients", absent, f"owners of data.source = {data.source!r}: "
                                                      f"{_show(sorted(owners))}")
        frame = frame[frame[data.client_column].astype(str).isin(data.clients)]
    cells: dict[str, list[str | None]] = {}
    for name in frame.columns:
        column = frame[name]
        text = column.astype(str).str.strip()
        missing = (column.isna() | text.str.lower().isin(MISSING)).tolist()
        cells[str(name)] = [None if m else t for t, m in zip(text.tolist(), missing, strict=True)]
    key = source.provenance["dataset"]
    where = [f"row {i + 1} of {key} as shaped" for i in range(len(frame))]
    return _Table(list(cells), cells, where, {key: source.provenance["shaped_sha256"]}), source.provenance


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


def _columns(data: Any, table: _Table, owner: str | None) -> list[str]:
    """The feature columns: those of `data.columns`, `data.features`, or every other column;
    each must be in the table (the client column too, unless the owner is named)."""
    present = f"the table's columns are {_show(table.columns, 40)}"
    for name in ("client_column", "label_column"):
        column = getattr(data, name)
        if column not in table.cells and not (name == "client_column" and owner is not None):
            raise ConfigError(f"data.{name}", column, f"a column of the table: {present}")
    if data.columns is not None:
        for i, col in enumerate(data.columns):
            if col.name not in table.cells:
                raise ConfigError(f"data.columns[{i}].name", col.name, f"a column of the table: {present}")
        return [c.name for c in data.columns]
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
                              f"column {gap!r} has no value at {table.where[i]}; "
                              "data.missing = 'drop' drops such rows (values are never imputed)")
    if not keep:
        raise ConfigError("data.missing", data.missing, f"every row misses a value in {_show(used)}, so none is left")
    return keep


def _infer_columns(table: _Table, features: list[str], rows: list[int],
                   indexed: list[str] | None = None) -> list[dict[str, Any]]:
    """Each feature column's kind (an index when `data.index_columns` names it, else numeric
    when every value is a number, else categorical) and vocabulary."""
    out = []
    for name in features:
        cells = [table.cells[name][i] for i in rows]
        if name in (indexed or ()):
            out.append({"name": name, "kind": "index", "categories": _ordered(set(cells))})  # type: ignore[arg-type]
            continue
        if _numbers(cells) is not None:
            out.append({"name": name, "kind": "numeric"})
            continue
        categories = _ordered(set(cells))  # type: ignore[arg-type]
        if len(categories) > MAX_CATEGORIES:
            raise ConfigError("data.features", name, f"a column to one-hot encode: {name!r} holds {len(categories)} "
                                                     f"distinct values (at most {MAX_CATEGORIES}); list data.features without it")
        out.append({"name": name, "kind": "categorical", "categories": categories})
    return out


def _check_columns(table: _Table, columns: list[dict[str, Any]], rows: list[int], given: bool) -> None:
    """Numeric columns hold finite numbers; categorical ones only their vocabulary's values."""
    for i, col in enumerate(columns):
        field_name, name = (f"data.columns[{i}]", col["name"]) if given else ("data.features", col["name"])
        if col["kind"] == "numeric":
            for r in rows:
                value = _numbers([table.cells[name][r]])
                if value is None or not math.isfinite(value[0]):
                    raise ConfigError(f"{field_name}.kind" if given else field_name, "numeric" if given else name,
                                      f"finite numbers: column {name!r} holds {table.cells[name][r]!r} at {table.where[r]}")
        else:
            known = set(col["categories"])
            bad = next((r for r in rows if table.cells[name][r] not in known), None)
            if bad is not None:
                raise ConfigError(f"{field_name}.categories", _show(col["categories"]),
                                  f"every value of column {name!r}: it holds {table.cells[name][bad]!r} at {table.where[bad]}")


def _labels(data: Any, table: _Table, rows: list[int]) -> tuple[list[str] | None, np.ndarray]:
    """Classification: the classes (`data.labels`, else the sorted values) and each row's
    index among them; regression: None and each row's float target."""
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
    labels = data.labels or _ordered(set(cells))  # type: ignore[arg-type]
    if len(labels) < 2:
        raise ConfigError("data.label_column", name, f"a column with at least two classes (every row of {name!r} "
                                                     f"holds {labels[0]!r})")
    index = {v: k for k, v in enumerate(labels)}
    bad = next((i for i in rows if table.cells[name][i] not in index), None)
    if bad is not None:
        raise ConfigError("data.labels", _show(labels), f"every class of column {name!r}: it holds "
                                                        f"{table.cells[name][bad]!r} at {table.where[bad]}")
    return labels, np.asarray([index[c] for c in cells], dtype=np.int64)  # type: ignore[index]


def _split(data: Any, fed: Any, clients: list[str]) -> tuple[list[str], list[str]]:
    """Training and held-out client values: `data.held_out` (named), else the last
    `federated.held_out_clients`; `federated.n_clients` must count the rest."""
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
    own statistics, categorical features one-hot over the shared vocabulary, index features
    as their position in it (one column each, which the model embeds)."""
    parts = []
    for col in columns:
        cells = [table.cells[col["name"]][i] for i in rows]
        if col["kind"] == "numeric":
            parts.append(_standardized(np.asarray([float(c) for c in cells], dtype=np.float64))[:, None])  # type: ignore[arg-type]
        elif col["kind"] == "index":
            index = {v: k for k, v in enumerate(col["categories"])}
            parts.append(np.asarray([index[c] for c in cells], dtype=np.float64)[:, None])
        else:
            index = {v: k for k, v in enumerate(col["categories"])}
            onehot = np.zeros((len(rows), len(index)))
            onehot[np.arange(len(rows)), [index[c] for c in cells]] = 1.0
            parts.append(onehot)
    return np.concatenate(parts, axis=1)


def _schema(data: Any, clients: list[str], columns: list[dict[str, Any]], labels: list[str] | None) -> dict[str, Any]:
    return {"task": data.task or "classification", "client_column": data.client_column,
            "label_column": data.label_column, "clients": clients, "columns": columns, "labels": labels}


def _configured_columns(data: Any) -> list[dict[str, Any]]:
    return [c.model_dump(exclude_none=True) for c in data.columns]


def _shape(columns: list[dict[str, Any]], labels: list[str] | None) -> tuple[Kind, int, tuple[int, ...]]:
    width = sum(len(c["categories"]) if c["kind"] == "categorical" else 1 for c in columns)
    return ("regression", 1, (width,)) if labels is None else ("classification", len(labels), (width,))


def _check_sizes(fed: Any, owners: dict[str, list[int]], dropped: bool, targets: np.ndarray,
                 labels: list[str] | None) -> None:
    """Every client holds an episode: support_size + query_size rows, of each class with
    `shots = "per_class"`."""
    support, query = fed.partition.support_size, fed.partition.query_size
    why = " (after dropping rows with missing values)" if dropped else ""
    for value, mine in owners.items():
        if len(mine) < support + query:
            raise ConfigError("federated.partition.support_size", support,
                              f"support_size + query_size = {support + query} at most the rows of every client: "
                              f"client {value!r} holds {len(mine)} rows{why}")
        if fed.partition.shots == "per_class":
            counts = np.bincount(targets[mine], minlength=len(labels))
            short = int(np.argmin(counts))
            if counts[short] < support + query:
                raise ConfigError("federated.partition.shots", "per_class",
                                  f"clients holding support_size + query_size = {support + query} rows of every class, "
                                  f"or 'per_task': client {value!r} holds {counts[short]} of class {labels[short]!r}{why}")


def federated_table(data: Any, fed: Any, owner_file: str | None = None, owner: str | None = None) -> TableData:
    """The clients of a table: one `ExampleClient` per value of `data.client_column`.

    With `owner_file` (an owner's supernode): that file alone, checked against the config's
    schema, is the one client with rows (`owner` names it when the file has no client
    column); without `data.path` (a deployed server) no client has rows here."""
    if owner_file is None and data.path is None and data.source is None:
        clients, columns = list(data.clients), _configured_columns(data)
        train, held = _split(data, fed, clients)
        kind, n_outputs, shape = _shape(columns, data.labels)
        remote = lambda v: OwnedClient(v, kind, n_outputs, shape)  # noqa: E731
        return TableData([remote(v) for v in train], [remote(v) for v in held], kind, n_outputs, shape,
                         _schema(data, clients, columns, data.labels))
    provenance = None
    if owner_file is None and data.source is not None:
        table, provenance = source_table(data)
    else:
        table = read_table(owner_file if owner_file is not None else data.path)
    features = _columns(data, table, owner)
    has_owner_column = data.client_column in table.cells
    rows = _drop_missing(data, table, [*([data.client_column] if has_owner_column else []), data.label_column, *features])
    columns = _configured_columns(data) if data.columns is not None else _infer_columns(table, features, rows,
                                                                                        data.index_columns)
    _check_columns(table, columns, rows, data.columns is not None)
    labels, targets = _labels(data, table, rows)
    owners: dict[str, list[int]] = {}
    for i, pos in enumerate(rows):
        owners.setdefault(table.cells[data.client_column][pos] if has_owner_column else owner, []).append(i)  # type: ignore[arg-type]
    clients = list(data.clients) if data.clients is not None else _ordered(set(owners))
    for value in owners:
        if value not in clients:
            raise ConfigError("data.clients", _show(clients), f"every owner in the table: column {data.client_column!r} "
                                                              f"holds {value!r}")
    if owner_file is not None:
        if owner is not None and set(owners) != {owner}:
            raise ConfigError("owner", owner, f"the owner the file's column {data.client_column!r} names: {_show(sorted(owners))}")
        if len(owners) != 1:
            raise ConfigError("data-file", owner_file, f"one owner's rows: column {data.client_column!r} holds "
                                                       f"{_show(sorted(owners))}")
    else:
        absent = [c for c in clients if c not in owners]
        if absent:
            raise ConfigError("data.clients", _show(clients), f"owners with rows in data.path ({absent[0]!r} has none)")
    train, held = _split(data, fed, clients)
    _check_sizes(fed, owners, len(rows) < len(table.where), targets, labels)
    kind, n_outputs, shape = _shape(columns, labels)

    def client(value: str) -> ExampleClient | OwnedClient:
        mine = owners.get(value)
        if mine is None:
            return OwnedClient(value, kind, n_outputs, shape)
        x = torch.from_numpy(encode_client(table, [rows[i] for i in mine], columns)).float()
        y = torch.from_numpy(targets[mine])
        y = y.float()[:, None] if kind == "regression" else y
        return ExampleClient(x, y, fed.partition.support_size, fed.partition.query_size, kind, n_outputs,
                             fed.partition.shots == "per_class")

    place = None
    if owner_file is not None:
        (value,) = owners
        place = ("train", train.index(value)) if value in train else ("test", held.index(value))
    return TableData([client(v) for v in train], [client(v) for v in held], kind, n_outputs, shape,
                     _schema(data, clients, columns, labels), dict(table.files), place, provenance)


def configured_schema(data: Any) -> dict[str, Any] | None:
    """The schema a table config writes out (`data.clients`, `.columns`, `.labels`), if it does."""
    if data.name != "table" or data.clients is None or data.columns is None:
        return None
    return _schema(data, list(data.clients), _configured_columns(data), data.labels)


def with_schema(cfg: Any, data: TableData) -> Any:
    """`cfg` with the schema `data` was read with (`data.clients`, `.columns`, `.labels`),
    as a run's `config.toml` records it; other configs unchanged."""
    if cfg.data.name != "table":
        return cfg
    schema = data.schema
    update = {"clients": schema["clients"], "columns": schema["columns"], "labels": schema["labels"]}
    return cfg.model_validate({**cfg.model_dump(exclude_none=True), "data": {**cfg.data.model_dump(exclude_none=True), **update}})


def resolve_schema(cfg: Any) -> Any:
    """`cfg` with its table's schema written out, read from `data.path` where it is not
    (what a deployed server sends its owners); other configs unchanged."""
    if cfg.data.name != "table" or (cfg.data.path is None and cfg.data.source is None):
        return cfg
    return with_schema(cfg, federated_table(cfg.data, cfg.federated))
