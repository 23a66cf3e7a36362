"""The sections of a run's configuration (pydantic models): strict, finite, each field
documented where it is declared; `Config` ties them together and checks the rules that span
sections (`rules.py`)."""

from __future__ import annotations

import re
import warnings
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fedmeta.config.layout import deprecation_notice, move_deprecated
from fedmeta.config.rules import check_compatible
from fedmeta.errors import ConfigDeprecationWarning, ConfigError

PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
MAX_SEED = 2**63 - 1  # torch and numpy seed from a 64-bit integer; the run adds small offsets
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MAX_THREADS = 1024
DEVICE = re.compile(r"auto|cpu|mps|cuda(:(0|[1-9][0-9]*))?")




class Section(BaseModel):
    """Strict (a TOML string or boolean never becomes a number, 3.0 never an integer) and
    finite: no setting takes inf or nan."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class RunConfig(Section):
    name: str = "run"  # names the default run folder, runs/<name>-<time>
    seed: Seed = 0
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = None  # torch intra-op threads; default: 1 for vmapped (MLP) runs, else torch's
    tensorboard: bool | None = None  # true: TensorBoard event files in <run folder>/tensorboard (pip install tensorboard)
    device: str | None = None  # "auto" (None), "cpu", "cuda", "cuda:<index>" or "mps"; resolved by fedmeta.device

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not name or name.startswith(".") or any(c in name for c in "/\\") or not name.isprintable():
            raise ConfigError("run.name", name, "a file name: not empty, no '/', '\\' or control characters, "
                                                "not starting with '.' (it names the folder runs/<name>-<time>)")
        return name

    @field_validator("device")
    @classmethod
    def _device(cls, device: str | None) -> str | None:
        if device is not None and not DEVICE.fullmatch(device):
            raise ConfigError("run.device", device, "'auto', 'cpu', 'cuda', 'cuda:<index>' (e.g. 'cuda:1') or 'mps'")
        return device


class ColumnSchema(Section):
    name: str
    kind: Literal["numeric", "categorical", "index"]
    # categorical: the shared vocabulary, in one-hot order; index: in embedding-row order
    categories: list[str] | None = None


DATA_NAMES = ("sinusoid", "omniglot", "digits", "synthetic", "table")
SOURCES = ("movielens", "lending_club", "covid_testing")  # data.source: fedmeta.data.<source>


class DataConfig(Section):
    # a built-in dataset, a factory "package.module:factory" (cfg, generator) -> FederatedData
    # (federated runs), or the name of a fedmeta.plugins entry point "dataset.<name>"
    name: str = "digits"
    data_dir: str | None = None
    n_way: Annotated[int, Field(ge=2)] = 5
    k_shot: PosInt = 1
    k_query: PosInt = 15
    rotations: bool = True
    test_alphabets: list[str] | None = None
    test_classes: list[int] = [5, 6, 7, 8, 9]
    # name = "table" only (docs/data.md); unset = None, so other runs' config.toml is unchanged
    path: str | list[str] | None = None  # .csv or .parquet files (Parquet needs pyarrow), one or one per owner
    # or a table that ships inside a package, shaped for an application (data/sources.py);
    # it sets client_column, label_column, task and labels unless they are given
    source: str | None = None
    # the schema the owners share, not their rows (unset: read from the files; a deployed
    # server, which holds no rows, needs all three; `fedmeta data schema` prints them)
    clients: list[str] | None = None  # every owner, training and held out, in client-id order
    columns: list[ColumnSchema] | None = None  # the features, in encoding order
    labels: list[str] | None = None  # classification: the classes, in index order
    # classification: each class's weight in the cross-entropy, in class order (e.g. the
    # inverse of its frequency, for a rare outcome); unset: 1 each
    class_weights: list[Annotated[float, Field(gt=0)]] | None = None
    client_column: str | None = None  # each distinct value is a client
    label_column: str | None = None  # the target
    task: Literal["classification", "regression"] | None = None  # unset: "classification"
    features: list[str] | None = None  # unset: every column but the client and label columns
    # features read as an index into their vocabulary, for a learned embedding (an item's id:
    # any number of distinct values); the MLP embeds each in model.embedding_dim numbers
    index_columns: list[str] | None = None
    missing: Literal["refuse", "drop"] | None = None  # a row missing a value; unset: "refuse"
    held_out: list[str] | None = None  # client values held out of training (else federated.held_out_clients)

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _plugin("data.name", "dataset", name, DATA_NAMES)

    @field_validator("source")
    @classmethod
    def _known_source(cls, source: str | None) -> str | None:
        if source is not None and source not in SOURCES:
            raise ConfigError("data.source", source, " or ".join(repr(s) for s in SOURCES))
        return source

    @model_validator(mode="before")
    @classmethod
    def _source_defaults(cls, data: Any) -> Any:
        """A source's own client column, label column, task and classes, where not given."""
        source = data.get("source") if isinstance(data, dict) else None
        if not isinstance(source, str) or source not in SOURCES:
            return data
        import importlib

        defaults = importlib.import_module(f"fedmeta.data.{source}").DEFAULTS
        return {**defaults, **data}


MODEL_NAMES = ("auto", "mlp", "conv4")


class ModelConfig(Section):
    # "auto", "mlp", "conv4", a factory "package.module:factory" (x_shape, n_outputs) -> nn.Module,
    # or the name of a fedmeta.plugins entry point "model.<name>" (docs/extending.md)
    name: str = "auto"
    hidden: list[PosInt] = [40, 40]  # mlp
    filters: PosInt = 64  # conv4
    embedding_dim: PosInt | None = None  # mlp over a table with data.index_columns; unset: 8

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _plugin("model.name", "model", name, MODEL_NAMES)


class MetaConfig(Section):
    algorithm: Literal["maml", "fomaml", "reptile", "metasgd", "anil"] = "maml"
    inner_steps: Annotated[int, Field(ge=0)] = 1
    inner_lr: PosFloat = 0.01
    eval_inner_steps: Annotated[int, Field(ge=0)] = 10
    # figures pooled over the evaluation clients' query sets, before and after adaptation
    # (federated runs whose rows are here): rmse, mae (regression); auc (two classes),
    # balanced_accuracy (classification); unset = None, so other runs' config.toml is unchanged
    eval_metrics: list[Literal["rmse", "mae", "auc", "balanced_accuracy"]] | None = None
    meta_batch_size: PosInt = 25
    batching: Literal["auto", "vmap", "loop"] = "auto"
    compile_query: bool = False  # torch.compile each task's query pass (~30 s to compile per shape)


class TrainConfig(Section):
    iterations: PosInt = 1000
    outer_optimizer: Literal["adam", "sgd"] = "adam"
    outer_lr: PosFloat = 1e-3
    eval_every: PosInt = 100
    eval_tasks: PosInt = 100
    lake_runs: bool = False


class PartitionConfig(Section):
    """`[federated.partition]`: how the dataset is split among clients, and each client's episodes."""

    scheme: Literal["dirichlet", "shards", "natural"] = "dirichlet"
    alpha: PosFloat = 0.5
    shards_per_client: PosInt = 2
    synthetic_alpha: Annotated[float, Field(ge=0)] = 1.0
    synthetic_beta: Annotated[float, Field(ge=0)] = 1.0
    drawers_per_client: PosInt = 5
    support_size: PosInt = 10
    query_size: PosInt = 10
    # table classification: support_size and query_size rows of each class per episode
    # ("per_class", K-shot), or of any class ("per_task"); unset: "per_task"
    shots: Literal["per_task", "per_class"] | None = None


PROCEDURES = ("sgd", "fedprox", "fedmeta", "perfedavg")


class ClientsConfig(Section):
    """`[federated.clients]`: what each sampled client runs, and how it fails or is compressed."""

    # "sgd", "fedprox", "fedmeta", "perfedavg", a factory "package.module:factory"
    # (model, kind) -> an object with step(params, anchor, episodes), or an entry point "procedure.<name>"
    procedure: str = "fedmeta"
    local_steps: PosInt = 5
    local_steps_min: PosInt | None = None
    lr: PosFloat = 0.05
    tasks_per_step: PosInt = 4
    mu: Annotated[float, Field(ge=0)] = 0.01
    perfedavg_variant: Literal["fo", "hf"] = "fo"
    dropout_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    straggler_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0
    compression: Literal["none", "topk", "int8"] = "none"
    topk_fraction: Annotated[float, Field(gt=0, le=1)] = 0.05
    batching: Literal["auto", "vmap", "loop"] = "auto"
    chunk: PosInt = 256

    @field_validator("procedure")
    @classmethod
    def _known(cls, procedure: str) -> str:
        return _plugin("federated.clients.procedure", "procedure", procedure, PROCEDURES)


def _plugin(field: str, kind: str, name: str, known: tuple[str, ...]) -> str:
    """`name` if it is one of the `known` built-in names, or names a plugin of `kind` (an
    import path or an entry point's short name) that imports and follows its protocol
    (`fedmeta.federated.registry.load_plugin`)."""
    if name in known:
        return name
    from fedmeta.errors import BadInput
    from fedmeta.federated.registry import load_plugin

    try:
        load_plugin(kind, name, field, known)
    except BadInput as err:
        raise ConfigError(field, name, err.accepted) from None
    return name


def _registered(field: str, registry: str, name: str, extra: tuple[str, ...] = ()) -> str:
    """`name` if `registry` (a `fedmeta.federated` registry, imported when first needed) has
    it, or, where the registry takes plugins (`Registry.plugin`), if `name` is one."""
    import importlib

    module, _, attr = registry.rpartition(".")
    table = getattr(importlib.import_module(module), attr)
    names = (*extra, *table)
    if name in names:
        return name
    if getattr(table, "plugin", None) is not None:
        return _plugin(field, table.plugin, name, names)
    quoted = [repr(n) for n in names]
    raise ConfigError(field, name, f"{', '.join(quoted[:-1])} or {quoted[-1]}")


class ServerConfig(Section):
    """`[federated.server]`: the server strategy (federated/strategies/) applied to the aggregate;
    each strategy reads the keys below that it declares."""

    strategy: str = "fedavg"  # a key of fedmeta.federated.strategies.STRATEGIES, "package.module:Class" or a plugin
    lr: PosFloat = 1.0
    momentum: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta1: Annotated[float, Field(ge=0, lt=1)] = 0.9
    beta2: Annotated[float, Field(ge=0, lt=1)] = 0.99
    tau: PosFloat = 1e-3

    @field_validator("strategy")
    @classmethod
    def _known(cls, name: str) -> str:
        return _registered("federated.server.strategy", "fedmeta.federated.strategies.STRATEGIES", name)


class RobustConfig(Section):
    """`[federated.robust]`: the server's aggregation rule (federated/robust/) in place of the
    weighted mean; None = the rule's own default."""

    rule: str = "mean"  # a key of fedmeta.federated.robust.ROBUST, "package.module:Class" or a plugin
    trim_fraction: Annotated[float, Field(ge=0, lt=0.5)] | None = None
    byzantine_clients: Annotated[int, Field(ge=0)] | None = None  # f the rule tolerates (Krum, Multi-Krum)
    krum_selected: PosInt | None = None
    geomed_smoothing: PosFloat | None = None
    geomed_max_iter: PosInt | None = None
    norm_bound: PosFloat | None = None

    @field_validator("rule")
    @classmethod
    def _known(cls, name: str) -> str:
        return _registered("federated.robust.rule", "fedmeta.federated.robust.ROBUST", name)


class AttackConfig(Section):
    """`[federated.attack]`: simulated malicious clients (federated/attacks.py), to test a robust
    rule; None = the attack's own default."""

    name: str = "none"  # "none" or a key of fedmeta.federated.attacks.ATTACKS
    fraction: Annotated[float, Field(ge=0, lt=1)] = 0.0  # of the training clients, fixed for the run
    scale: PosFloat | None = None
    noise_std: PosFloat | None = None
    z: float | None = None
    byzantine_clients: PosInt | None = None  # f that "a little is enough" assumes for its z_max

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return _registered("federated.attack.name", "fedmeta.federated.attacks.ATTACKS", name, ("none",))


class FederatedConfig(Section):
    """Clients, rounds and the server. Present in a config = a federated run; its sections
    say what they configure."""

    rounds: PosInt = 30
    eval_every: PosInt = 5
    n_clients: PosInt = 100
    held_out_clients: Annotated[int, Field(ge=0)] = 20
    clients_per_round: Annotated[float, Field(gt=0)] = 10
    min_clients: PosInt = 1
    max_retries: Annotated[int, Field(ge=0)] = 3
    partition: PartitionConfig = PartitionConfig()
    clients: ClientsConfig = ClientsConfig()
    server: ServerConfig = ServerConfig()
    robust: RobustConfig = RobustConfig()
    attack: AttackConfig = AttackConfig()

    @model_validator(mode="before")
    @classmethod
    def _old_layout(cls, data: Any) -> Any:
        """Keys of the flat layout (before the sections) move to their place, each with a notice."""
        if isinstance(data, dict):
            data, moved = move_deprecated(data)
            for old in moved:
                warnings.warn(ConfigDeprecationWarning(deprecation_notice(old)), stacklevel=2)
        return data


class LedgerConfig(Section):
    """The signed model ledger (`ledger.db` in the run folder) of a federated run."""

    enabled: bool = False
    server_key: str | None = None  # Ed25519 PEM; default $FEDMETA_HOME/server_key.pem
    client_keys: str | None = None  # folder of <client id>.pem made by `fedmeta keys create`
    participants: dict[str, str] = {}  # registered client id -> Ed25519 public key (hex)
    # write the signed root on an Ethereum chain during the run (ledger/anchor.py):
    # "eth-tester" (an in-process chain, for tests) or a node's JSON-RPC URL
    anchor: str | None = None
    anchor_every: PosInt | None = None  # rounds between anchors; unset: every round

    @field_validator("anchor")
    @classmethod
    def _chain(cls, anchor: str | None) -> str | None:
        if anchor is not None and anchor != "eth-tester" and not re.fullmatch(r"https?://[^\s/]+(/\S*)?", anchor):
            raise ConfigError("ledger.anchor", anchor, "'eth-tester' or an Ethereum node's JSON-RPC URL, "
                                                       "e.g. http://127.0.0.1:8545")
        return anchor

    @field_validator("participants")
    @classmethod
    def _public_keys(cls, participants: dict[str, str]) -> dict[str, str]:
        for cid, public in participants.items():
            try:
                raw = bytes.fromhex(public)
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise ConfigError(f"ledger.participants.{cid}", public,
                                  "64 hex characters: the Ed25519 public key `fedmeta keys create` prints")
        return participants


class PrivacyConfig(Section):
    """Differential privacy: client-level (DP-FedAvg, McMahan et al. 2018; noise at the
    server or shared among the clients) with fixed or adaptive clipping (Andrew et al. 2021),
    or example-level DP-SGD inside each client (Abadi et al. 2016); secure aggregation."""

    dp: Literal["off", "central", "local", "example"] = "off"
    clip_norm: PosFloat = 1.0  # C, or the initial C under adaptive clipping
    clipping: Literal["fixed", "adaptive"] = "fixed"
    target_quantile: Annotated[float, Field(gt=0, lt=1)] = 0.5  # adaptive: fraction of updates left unclipped
    clip_learning_rate: PosFloat = 0.2  # adaptive: η of C ← C·exp(−η(b̄ − γ))
    clip_count_stddev: PosFloat | None = None  # adaptive: σ_b of the unclipped count; default m/20
    example_sample_rate: Annotated[float, Field(gt=0, le=1)] = 0.1  # example: Poisson rate q per local step
    noise_multiplier: Annotated[float, Field(ge=0)] = 1.0
    delta: Annotated[float, Field(gt=0, lt=1)] = 1e-5
    accountant: Literal["rdp", "pld"] = "rdp"
    target_epsilon: PosFloat | None = None
    noise_seed: Seed | None = None  # reproducible (insecure) noise, for experiments only
    secure_aggregation: Literal["off", "secagg", "secagg+", "ckks"] = "off"  # masked sums, or CKKS ciphertexts
    secagg_clip: PosFloat = 1.0  # fixed-point range of each weighted coordinate (DP: clip_norm)
    audit: bool = True  # membership-inference audit of the final model (example-holding clients)


class Config(Section):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    meta: MetaConfig = MetaConfig()
    train: TrainConfig = TrainConfig()
    federated: FederatedConfig | None = None
    ledger: LedgerConfig = LedgerConfig()
    privacy: PrivacyConfig = PrivacyConfig()

    @model_validator(mode="after")
    def _compatible(self) -> Config:
        check_compatible(self)
        return self

    @property
    def clients_per_round_count(self) -> int:
        fed = self.federated
        if fed is None:
            return 0
        if fed.clients_per_round <= 1 and not float(fed.clients_per_round).is_integer():
            return max(1, round(fed.clients_per_round * fed.n_clients))
        return int(fed.clients_per_round)

    @property
    def model_name(self) -> str:
        """model.name with "auto" resolved: central runs use Conv4 for image tasks (Omniglot,
        digits) as the papers do, the MLP for sinusoids; federated runs use Conv4 for Omniglot
        only (a federated digits client holds a few hundred 8x8 images, where the MLP suffices)."""
        if self.model.name != "auto":
            return self.model.name
        if self.federated is None:
            return "mlp" if self.data.name == "sinusoid" else "conv4"
        return "conv4" if self.data.name == "omniglot" else "mlp"

    @property
    def clip_count_stddev(self) -> float:
        """σ_b of adaptive clipping's noisy unclipped count: as set, or m/20 for m expected
        clients per round (Andrew et al. 2021, §4)."""
        if self.privacy.clip_count_stddev is not None:
            return self.privacy.clip_count_stddev
        return self.clients_per_round_count / 20

    def to_toml(self) -> str:
        return tomli_w.dumps(self.model_dump(mode="json", exclude_none=True))


# The [data] and [federated.partition] keys each dataset reads, centrally (no [federated])
# and federated; k_shot and k_query are left out: federated example datasets (digits,
# synthetic) take their episode sizes from federated.partition.support_size / query_size.
