"""Rules that span sections: which combinations a run can honour, and which options the
chosen dataset reads (an option it would ignore, set away from its default, is refused)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedmeta.errors import ConfigError

if TYPE_CHECKING:
    from fedmeta.config.sections import Config, DataConfig

DIGITS_CLASS_SIZES = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # scikit-learn's digits 0..9
DIGITS_EXAMPLES = sum(DIGITS_CLASS_SIZES)  # 1797 images, which federated digits partitions
SYNTHETIC_MAX_EXAMPLES = 5000  # the most examples a Synthetic(α, β) client holds (data/federated.py)
EXAMPLE_DP_PROCEDURES = ("sgd", "fedprox", "fedmeta")  # example-level DP (federated/private_client.py)
EXAMPLE_DP_ALGORITHMS = ("fomaml", "reptile", "anil")
EXAMPLE_DATA = ("digits", "synthetic", "table")  # datasets whose clients hold labelled examples

def check_example_dp(
    procedure: str, algorithm: str, *, data: str = "digits", model: str = "mlp"
) -> None:
    """Raise ConfigError unless example-level DP supports this combination of config values
    (`federated.clients.procedure`, `meta.algorithm`, `data.name`, resolved `model.name`)."""
    where = "with privacy.dp = 'example'"
    if procedure not in EXAMPLE_DP_PROCEDURES:
        raise ConfigError(
            "federated.clients.procedure", procedure, f"one of {', '.join(EXAMPLE_DP_PROCEDURES)} {where}"
        )
    if procedure == "fedmeta" and algorithm not in EXAMPLE_DP_ALGORITHMS:
        raise ConfigError(
            "meta.algorithm",
            algorithm,
            f"one of {', '.join(EXAMPLE_DP_ALGORITHMS)} {where} "
            "(second-order meta-gradients mix support examples into every query term, so they cannot be clipped per example)",
        )
    if data not in EXAMPLE_DATA:
        raise ConfigError(
            "data.name",
            data,
            f"one of {', '.join(EXAMPLE_DATA)} {where} (clients must hold examples, not task regions)",
        )
    if model == "conv4":
        raise ConfigError(
            "model.name",
            model,
            f"'mlp' {where} (Conv4's batch norm cannot be computed per example)",
        )


_EPISODE_KEYS = ("n_way", "rotations", "test_classes", "test_alphabets")
_TABLE_KEYS = ("path", "source", "client_column", "label_column", "task", "features", "index_columns", "missing", "held_out", "clients", "columns",
               "labels")
_DATA_USES = {
    ("sinusoid", False): set(),
    ("digits", False): {"n_way", "test_classes"},
    ("omniglot", False): {"n_way", "rotations", "test_alphabets"},
    ("sinusoid", True): set(),
    ("digits", True): set(),
    ("synthetic", True): set(),
    ("table", True): set(_TABLE_KEYS),
    ("omniglot", True): {"n_way", "rotations", "test_alphabets"},
}
_BUILT_IN = {name for name, _ in _DATA_USES}
_PARTITION_USES = {  # keys of [federated.partition] that only some datasets read
    "support_size": {"digits", "synthetic", "table"},
    "query_size": {"digits", "synthetic", "table"},
    "scheme": {"digits", "table"},
    "alpha": {"digits"},
    "shards_per_client": {"digits"},
    "synthetic_alpha": {"synthetic"},
    "synthetic_beta": {"synthetic"},
    "drawers_per_client": {"omniglot"},
    "shots": {"table"},
}


def _only(readers: list[str]) -> str:
    if not readers:
        return "no dataset reads it in this mode"
    return f"only {' and '.join(readers)} {'reads' if len(readers) == 1 else 'read'} it"


def _check_digits_episodes(data: DataConfig) -> None:
    """N-way K-shot digits episodes fit both splits (data/digits.py would refuse them later)."""
    held_out = set(data.test_classes)
    if not held_out <= set(range(10)) or not 0 < len(held_out) < 10 or len(held_out) != len(data.test_classes):
        raise ConfigError("data.test_classes", data.test_classes, "distinct digits 0..9, at least one and not all ten")
    splits = {"train": [c for c in range(10) if c not in held_out], "test": sorted(held_out)}
    for split, classes in splits.items():
        if data.n_way > len(classes):
            raise ConfigError("data.n_way", data.n_way, f"at most {len(classes)} (digit classes in the {split} split)")
        smallest = min(DIGITS_CLASS_SIZES[c] for c in classes)
        if data.k_shot + data.k_query > smallest:
            raise ConfigError("data.k_query", data.k_query,
                              f"at most {smallest - data.k_shot}: data.k_shot + data.k_query at most {smallest} "
                              f"(examples of the smallest digit class in the {split} split)")


def check_dataset_options(cfg: Config) -> None:
    """Refuse an option the chosen dataset ignores (set away from its default), and
    episode sizes larger than the data."""
    data, fed = cfg.data, cfg.federated
    federated = fed is not None
    mode = "a federated" if federated else "a"
    uses = _DATA_USES.get((data.name, federated), set())  # a dataset from a plugin reads none of these
    for key in _EPISODE_KEYS + _TABLE_KEYS:
        if key not in uses and getattr(data, key) != type(data).model_fields[key].default:
            readers = sorted({n for (n, f), keys in _DATA_USES.items() if f == federated and key in keys})
            raise ConfigError(f"data.{key}", getattr(data, key),
                              f"no setting here: {mode} {data.name} run ignores it ({_only(readers)})")
    if fed is None:
        if data.name == "digits":
            _check_digits_episodes(data)
        return
    part = fed.partition
    default = {key: info.default for key, info in type(fed.partition).model_fields.items()}
    for key, readers in _PARTITION_USES.items():
        if data.name in _BUILT_IN and data.name not in readers and getattr(part, key) != default[key]:
            raise ConfigError(f"federated.partition.{key}", getattr(part, key),
                              f"no setting here: federated {data.name} ignores it ({_only(sorted(readers))})")
    if data.name == "digits":
        if part.scheme == "natural":
            raise ConfigError("federated.partition.scheme", part.scheme, "'dirichlet' or 'shards' for digits (no natural owners)")
        if part.scheme != "dirichlet" and part.alpha != default["alpha"]:
            raise ConfigError("federated.partition.alpha", part.alpha,
                              "no setting here: only federated.partition.scheme = 'dirichlet' reads it")
        if part.scheme != "shards" and part.shards_per_client != default["shards_per_client"]:
            raise ConfigError("federated.partition.shards_per_client", part.shards_per_client,
                              "no setting here: only federated.partition.scheme = 'shards' reads it")
        total = fed.n_clients + fed.held_out_clients
        if part.scheme == "dirichlet" and 2 * total > DIGITS_EXAMPLES:  # data/partition.py: 2 examples each
            raise ConfigError("federated.n_clients", fed.n_clients,
                              f"at most {DIGITS_EXAMPLES // 2 - fed.held_out_clients} with {fed.held_out_clients} held-out "
                              f"clients: {DIGITS_EXAMPLES} digits give each of at most {DIGITS_EXAMPLES // 2} clients 2 examples")
        if part.scheme == "shards" and part.shards_per_client * total > DIGITS_EXAMPLES:
            raise ConfigError("federated.partition.shards_per_client", part.shards_per_client,
                              f"at most {DIGITS_EXAMPLES // total} for {total} clients ({DIGITS_EXAMPLES} digits)")
    if data.name == "table":
        _check_table(cfg)
    per = part.drawers_per_client
    if data.name == "omniglot" and (20 % per or per < data.k_shot + data.k_query):  # data/federated.py
        raise ConfigError("federated.partition.drawers_per_client", per,
                          f"a divisor of 20 (Omniglot's drawers) that is at least data.k_shot + data.k_query = {data.k_shot + data.k_query}")
    limit = {"digits": DIGITS_EXAMPLES, "synthetic": SYNTHETIC_MAX_EXAMPLES}.get(data.name)
    if limit is not None:
        holds = f"{limit} examples in all" if data.name == "digits" else f"at most {limit} examples per client"
        for key, other in (("support_size", "query_size"), ("query_size", "support_size")):
            if getattr(part, key) + getattr(part, other) > limit:
                raise ConfigError(f"federated.partition.{key}", getattr(part, key),
                                  f"at most {limit - getattr(part, other)} (with federated.partition.{other} = "
                                  f"{getattr(part, other)}, {data.name} holds {holds})")


def _check_table(cfg: Config) -> None:
    """What a table config must say, before its file is read (data/table.py checks the file)."""
    data, fed = cfg.data, cfg.federated
    for key, what in (("client_column", "the column naming each row's owner"), ("label_column", "the column holding the target")):
        if getattr(data, key) is None:
            raise ConfigError(f"data.{key}", None, f"{what}: data.name = 'table' needs it")
    _check_paths(data)
    _check_schema(data)
    if data.client_column == data.label_column:
        raise ConfigError("data.label_column", data.label_column, "another column than data.client_column")
    if data.features is not None:
        if not data.features:
            raise ConfigError("data.features", [], "at least one column (or leave it out: every other column)")
        for name in data.features:
            if name in (data.client_column, data.label_column):
                which = "client" if name == data.client_column else "label"
                raise ConfigError("data.features", name, f"a column other than data.{which}_column")
            if data.features.count(name) > 1:
                raise ConfigError("data.features", name, "distinct columns (it is listed twice)")
    if data.index_columns is not None:
        _distinct("data.index_columns", data.index_columns, "column")
        for name in data.index_columns:
            if name in (data.client_column, data.label_column) or (data.features is not None and name not in data.features):
                raise ConfigError("data.index_columns", name, "a feature column (not the client or label column; "
                                                              "one of data.features when it is given)")
    if data.columns is not None:
        indexed = {c.name for c in data.columns if c.kind == "index"}
        if indexed != set(data.index_columns or ()):
            raise ConfigError("data.index_columns", data.index_columns, f"the columns of kind 'index' in data.columns: "
                                                                        f"{sorted(indexed)}")
    if fed.partition.shots == "per_class" and data.task == "regression":
        raise ConfigError("federated.partition.shots", "per_class", "'per_task' with data.task = 'regression' (no classes)")
    if fed.partition.scheme == "shards":
        raise ConfigError("federated.partition.scheme", "shards",
                          "'natural' for table data: each value of data.client_column is a client")
    if data.held_out is not None:
        for value in data.held_out:
            if data.held_out.count(value) > 1:
                raise ConfigError("data.held_out", value, "distinct client values (it is listed twice)")
        default = type(fed).model_fields["held_out_clients"].default
        if fed.held_out_clients not in (default, len(data.held_out)):
            raise ConfigError("federated.held_out_clients", fed.held_out_clients,
                              f"{len(data.held_out)} or unset: data.held_out names the held-out clients")


def _distinct(field: str, values: list[str], what: str) -> None:
    if not values:
        raise ConfigError(field, [], f"at least one {what}")
    for value in values:
        if values.count(value) > 1:
            raise ConfigError(field, value, f"distinct {what}s (it is listed twice)")


def _check_paths(data: DataConfig) -> None:
    """A file, a list of files (one per owner, say), or none with the whole schema (a deployed
    server: the rows stay with their owners)."""
    if data.path is not None and data.source is not None:
        raise ConfigError("data.source", data.source, "unset when data.path is given: the rows come from one or the other")
    if data.source is not None:
        return
    if data.path is None:
        regression = (data.task or "classification") == "regression"
        needed = ("clients", "columns") if regression else ("clients", "columns", "labels")
        missing = [k for k in needed if getattr(data, k) is None]
        if missing:
            raise ConfigError("data.path", None, "a .csv or .parquet file, or a list of them; without one (a deployed "
                                                 f"server holds no rows) the schema: {', '.join('data.' + k for k in needed)} "
                                                 "(fedmeta data schema prints them)")
    elif isinstance(data.path, list):
        _distinct("data.path", data.path, "file")


def _check_schema(data: DataConfig) -> None:
    """The schema's parts that are given: distinct names, a vocabulary for each categorical
    column, classes only for classification."""
    if data.clients is not None:
        _distinct("data.clients", data.clients, "client")
    if data.labels is not None:
        if data.task == "regression":
            raise ConfigError("data.labels", data.labels, "unset with data.task = 'regression' (labels are classes)")
        _distinct("data.labels", data.labels, "class")
        if len(data.labels) < 2:
            raise ConfigError("data.labels", data.labels, "at least two classes")
    if data.columns is None:
        return
    names = [c.name for c in data.columns]
    _distinct("data.columns", names, "column name")
    for i, col in enumerate(data.columns):
        if col.name in (data.client_column, data.label_column):
            which = "client" if col.name == data.client_column else "label"
            raise ConfigError(f"data.columns[{i}].name", col.name, f"a column other than data.{which}_column")
        if col.kind in ("categorical", "index"):
            if not col.categories:
                raise ConfigError(f"data.columns[{i}].categories", col.categories, "the column's values, at least one")
            _distinct(f"data.columns[{i}].categories", col.categories, "value")
        elif col.categories is not None:
            raise ConfigError(f"data.columns[{i}].categories", col.categories, "unset for a numeric column")
    if data.features is not None and data.features != names:
        raise ConfigError("data.features", data.features, f"the names of data.columns, in order: {names}")


# -- the flat [federated] layout ----------------------------------------------------------
# Before its sections, [federated] held every key itself. Each flat key still loads: it
# moves to its section (old name -> "section.key" under [federated]) with a notice.
# `partition` and `attack` come first: they name a section now, and a string there is the
# flat key (the scheme, the attack's name).


def check_compatible(cfg: Config) -> None:
    """Refuse combinations a run cannot honour, naming the field to change."""
    fed = cfg.federated
    if (cfg.data.name in ("synthetic", "table") or cfg.data.name not in _BUILT_IN) and fed is None:
        raise ConfigError("data.name", cfg.data.name, "a federated run (add a [federated] section)")
    if cfg.model.embedding_dim is not None and not cfg.data.index_columns:
        raise ConfigError("model.embedding_dim", cfg.model.embedding_dim, "unset without data.index_columns (nothing to embed)")
    if cfg.data.class_weights is not None and fed is None:
        raise ConfigError("data.class_weights", cfg.data.class_weights, "unset in a central run (a federated run's option)")
    if cfg.meta.eval_metrics and fed is None:
        raise ConfigError("meta.eval_metrics", cfg.meta.eval_metrics, "unset in a central run (pooled figures are a "
                                                                      "federated run's personalization)")
    if cfg.run.tensorboard and fed is None:
        raise ConfigError("run.tensorboard", True, "a federated run (add a [federated] section); a central run's "
                                                   "metrics.jsonl holds its figures")
    if cfg.ledger.enabled and fed is None:
        raise ConfigError("ledger.enabled", True, "a federated run (add a [federated] section)")
    if cfg.ledger.anchor and not cfg.ledger.enabled:
        raise ConfigError("ledger.anchor", cfg.ledger.anchor, "unset, or ledger.enabled = true (anchors sign the ledger's roots)")
    if cfg.ledger.anchor_every is not None and not cfg.ledger.anchor:
        raise ConfigError("ledger.anchor_every", cfg.ledger.anchor_every, "unset without ledger.anchor")
    if cfg.ledger.client_keys and not (cfg.ledger.enabled and cfg.ledger.participants):
        raise ConfigError("ledger.client_keys", cfg.ledger.client_keys,
                          "signed updates need ledger.enabled = true and the registered ledger.participants")
    check_privacy(cfg)
    if fed is not None:
        check_federated(cfg)
    check_dataset_options(cfg)
    if cfg.data.name == "sinusoid" and cfg.model.name == "conv4":
        raise ConfigError("model.name", "conv4", "sinusoid tasks need model.name = 'mlp'")
    if cfg.train.lake_runs and (cfg.data.name, cfg.data.n_way, cfg.data.k_shot) != ("omniglot", 20, 1):
        raise ConfigError("train.lake_runs", True, "needs data.name = 'omniglot', n_way = 20, k_shot = 1")


def check_privacy(cfg: Config) -> None:
    fed, dp = cfg.federated, cfg.privacy
    if dp.dp != "off" and fed is None:
        raise ConfigError("privacy.dp", dp.dp, "'off' unless the run is federated (client-level DP)")
    if dp.target_epsilon is not None and (dp.dp == "off" or dp.noise_multiplier == 0):
        raise ConfigError("privacy.target_epsilon", dp.target_epsilon, "a budget only with privacy.dp on and privacy.noise_multiplier > 0")
    if dp.clipping == "adaptive" and dp.dp not in ("central", "local"):
        raise ConfigError("privacy.clipping", "adaptive", "'fixed' unless privacy.dp is 'central' or 'local' (client-level)")
    if dp.dp == "example" and fed is not None:
        check_example_dp(fed.clients.procedure, cfg.meta.algorithm, data=cfg.data.name, model=cfg.model_name)
    if dp.clipping == "adaptive" and dp.noise_multiplier > 0 and 2 * cfg.clip_count_stddev <= dp.noise_multiplier:
        raise ConfigError("privacy.clip_count_stddev", cfg.clip_count_stddev,
                          f"> privacy.noise_multiplier / 2 = {dp.noise_multiplier / 2:g} (else the clip count spends the whole budget)")
    if dp.secure_aggregation != "off" and fed is None:
        raise ConfigError("privacy.secure_aggregation", dp.secure_aggregation, "'off' unless the run is federated")


def check_federated(cfg: Config) -> None:
    fed, dp = cfg.federated, cfg.privacy
    clients, robust, attack = fed.clients, fed.robust, fed.attack
    if clients.local_steps_min is not None and clients.local_steps_min > clients.local_steps:
        raise ConfigError("federated.clients.local_steps_min", clients.local_steps_min,
                          f"at most federated.clients.local_steps = {clients.local_steps}")
    if fed.clients_per_round > fed.n_clients:
        raise ConfigError("federated.clients_per_round", fed.clients_per_round, f"a count up to n_clients = {fed.n_clients} or a fraction in (0, 1]")
    if fed.clients_per_round > 1 and fed.clients_per_round != int(fed.clients_per_round):
        raise ConfigError("federated.clients_per_round", fed.clients_per_round, "a whole count or a fraction in (0, 1]")
    if fed.min_clients > cfg.clients_per_round_count:
        raise ConfigError("federated.min_clients", fed.min_clients, f"at most the clients per round ({cfg.clients_per_round_count})")
    if dp.secure_aggregation != "off" and cfg.clients_per_round_count < 2:
        raise ConfigError("federated.clients_per_round", fed.clients_per_round,
                          f"at least 2 clients per round with privacy.secure_aggregation = '{dp.secure_aggregation}' "
                          "(the sum of one update is that update)")
    if robust.rule != "mean" and dp.secure_aggregation != "off":
        raise ConfigError("federated.robust.rule", robust.rule,
                          f"'mean' with privacy.secure_aggregation = '{dp.secure_aggregation}': a robust rule needs "
                          "each update in the clear, the server only sees the masked sum")
    if robust.rule != "mean" and dp.dp in ("central", "local"):
        raise ConfigError("federated.robust.rule", robust.rule,
                          f"'mean' with privacy.dp = '{dp.dp}': client-level ε is accounted for the noised mean "
                          "(use privacy.dp = 'example' or 'off')")
    if (attack.name == "none") != (attack.fraction == 0):
        field, value = ("federated.attack.name", "none") if attack.name == "none" else ("federated.attack.fraction", 0.0)
        raise ConfigError(field, value, "an attack and a federated.attack.fraction > 0 together (or neither)")
    if clients.perfedavg_variant == "hf" and clients.procedure == "perfedavg" and clients.tasks_per_step < 2:
        raise ConfigError("federated.clients.tasks_per_step", clients.tasks_per_step,
                          "at least 2 for Per-FedAvg HF (it draws an independent batch for the Hessian)")
