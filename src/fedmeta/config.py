"""The configuration of a run: pydantic models, TOML in, validated, errors name the field.

A run is described by one TOML file (see `configs/`), optionally changed by `--set a.b=v`
overrides, and saved resolved as `config.toml` in the run folder, so `--resume` and a
third party reading the folder see exactly what ran.
"""

from __future__ import annotations

import difflib
import tomllib
import typing
import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedmeta.errors import ConfigDeprecationWarning, ConfigError

PosInt = Annotated[int, Field(ge=1)]
PosFloat = Annotated[float, Field(gt=0)]
MAX_SEED = 2**63 - 1  # torch and numpy seed from a 64-bit integer; the run adds small offsets
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
MAX_THREADS = 1024
DIGITS_CLASS_SIZES = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # scikit-learn's digits 0..9
DIGITS_EXAMPLES = sum(DIGITS_CLASS_SIZES)  # 1797 images, which federated digits partitions
SYNTHETIC_MAX_EXAMPLES = 5000  # the most examples a Synthetic(α, β) client holds (data/federated.py)


EXAMPLE_DP_PROCEDURES = ("sgd", "fedprox", "fedmeta")  # example-level DP (federated/private_client.py)
EXAMPLE_DP_ALGORITHMS = ("fomaml", "reptile", "anil")
EXAMPLE_DATA = ("digits", "synthetic")  # datasets whose clients hold labelled examples


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


class Section(BaseModel):
    """Strict (a TOML string or boolean never becomes a number, 3.0 never an integer) and
    finite: no setting takes inf or nan."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)


class RunConfig(Section):
    name: str = "run"  # names the default run folder, runs/<name>-<time>
    seed: Seed = 0
    threads: Annotated[int, Field(ge=1, le=MAX_THREADS)] | None = None  # torch intra-op threads; default: 1 for vmapped (MLP) runs, else torch's

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not name or name.startswith(".") or any(c in name for c in "/\\") or not name.isprintable():
            raise ConfigError("run.name", name, "a file name: not empty, no '/', '\\' or control characters, "
                                                "not starting with '.' (it names the folder runs/<name>-<time>)")
        return name


class DataConfig(Section):
    name: Literal["sinusoid", "omniglot", "digits", "synthetic"] = "digits"
    data_dir: str | None = None
    n_way: Annotated[int, Field(ge=2)] = 5
    k_shot: PosInt = 1
    k_query: PosInt = 15
    rotations: bool = True
    test_alphabets: list[str] | None = None
    test_classes: list[int] = [5, 6, 7, 8, 9]


class ModelConfig(Section):
    name: Literal["auto", "mlp", "conv4"] = "auto"
    hidden: list[PosInt] = [40, 40]
    filters: PosInt = 64


class MetaConfig(Section):
    algorithm: Literal["maml", "fomaml", "reptile", "metasgd", "anil"] = "maml"
    inner_steps: Annotated[int, Field(ge=0)] = 1
    inner_lr: PosFloat = 0.01
    eval_inner_steps: Annotated[int, Field(ge=0)] = 10
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


class ClientsConfig(Section):
    """`[federated.clients]`: what each sampled client runs, and how it fails or is compressed."""

    procedure: Literal["sgd", "fedprox", "fedmeta", "perfedavg"] = "fedmeta"
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


def _registered(field: str, registry: str, name: str, extra: tuple[str, ...] = ()) -> str:
    """`name` if `registry` (a `fedmeta.federated` registry, imported when first needed) has it."""
    import importlib

    module, _, attr = registry.rpartition(".")
    names = (*extra, *getattr(importlib.import_module(module), attr))
    if name not in names:
        quoted = [repr(n) for n in names]
        raise ConfigError(field, name, f"{', '.join(quoted[:-1])} or {quoted[-1]}")
    return name


class ServerConfig(Section):
    """`[federated.server]`: the server strategy (federated/strategies/) applied to the aggregate;
    each strategy reads the keys below that it declares."""

    strategy: str = "fedavg"  # a key of fedmeta.federated.strategies.STRATEGIES
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

    rule: str = "mean"  # a key of fedmeta.federated.robust.ROBUST
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
        if self.data.name == "synthetic" and self.federated is None:
            raise ConfigError("data.name", "synthetic", "a federated run (add a [federated] section)")
        fed = self.federated
        if self.ledger.enabled and fed is None:
            raise ConfigError("ledger.enabled", True, "a federated run (add a [federated] section)")
        if self.ledger.client_keys and not (self.ledger.enabled and self.ledger.participants):
            raise ConfigError("ledger.client_keys", self.ledger.client_keys,
                              "signed updates need ledger.enabled = true and the registered ledger.participants")
        dp = self.privacy
        if dp.dp != "off" and fed is None:
            raise ConfigError("privacy.dp", dp.dp, "'off' unless the run is federated (client-level DP)")
        if dp.target_epsilon is not None and (dp.dp == "off" or dp.noise_multiplier == 0):
            raise ConfigError("privacy.target_epsilon", dp.target_epsilon, "a budget only with privacy.dp on and privacy.noise_multiplier > 0")
        if dp.clipping == "adaptive" and dp.dp not in ("central", "local"):
            raise ConfigError("privacy.clipping", "adaptive", "'fixed' unless privacy.dp is 'central' or 'local' (client-level)")
        if dp.dp == "example" and fed is not None:
            check_example_dp(fed.clients.procedure, self.meta.algorithm, data=self.data.name, model=self.model_name)
        if dp.clipping == "adaptive" and dp.noise_multiplier > 0 and 2 * self.clip_count_stddev <= dp.noise_multiplier:
            raise ConfigError("privacy.clip_count_stddev", self.clip_count_stddev,
                              f"> privacy.noise_multiplier / 2 = {dp.noise_multiplier / 2:g} (else the clip count spends the whole budget)")
        if dp.secure_aggregation != "off" and fed is None:
            raise ConfigError("privacy.secure_aggregation", dp.secure_aggregation, "'off' unless the run is federated")
        if fed is not None:
            clients, robust, attack = fed.clients, fed.robust, fed.attack
            if clients.local_steps_min is not None and clients.local_steps_min > clients.local_steps:
                raise ConfigError("federated.clients.local_steps_min", clients.local_steps_min,
                                  f"at most federated.clients.local_steps = {clients.local_steps}")
            if fed.clients_per_round > fed.n_clients:
                raise ConfigError("federated.clients_per_round", fed.clients_per_round, f"a count up to n_clients = {fed.n_clients} or a fraction in (0, 1]")
            if fed.clients_per_round > 1 and fed.clients_per_round != int(fed.clients_per_round):
                raise ConfigError("federated.clients_per_round", fed.clients_per_round, "a whole count or a fraction in (0, 1]")
            if fed.min_clients > self.clients_per_round_count:
                raise ConfigError("federated.min_clients", fed.min_clients, f"at most the clients per round ({self.clients_per_round_count})")
            if dp.secure_aggregation != "off" and self.clients_per_round_count < 2:
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
        _check_dataset_options(self)
        if self.data.name == "sinusoid" and self.model.name == "conv4":
            raise ConfigError("model.name", "conv4", "sinusoid tasks need model.name = 'mlp'")
        if self.train.lake_runs and (self.data.name, self.data.n_way, self.data.k_shot) != (
            "omniglot", 20, 1
        ):
            raise ConfigError(
                "train.lake_runs", True, "needs data.name = 'omniglot', n_way = 20, k_shot = 1"
            )
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
_EPISODE_KEYS = ("n_way", "rotations", "test_classes", "test_alphabets")
_DATA_USES = {
    ("sinusoid", False): set(),
    ("digits", False): {"n_way", "test_classes"},
    ("omniglot", False): {"n_way", "rotations", "test_alphabets"},
    ("sinusoid", True): set(),
    ("digits", True): set(),
    ("synthetic", True): set(),
    ("omniglot", True): {"n_way", "rotations", "test_alphabets"},
}
_PARTITION_USES = {  # keys of [federated.partition] that only some datasets read
    "support_size": {"digits", "synthetic"},
    "query_size": {"digits", "synthetic"},
    "scheme": {"digits"},
    "alpha": {"digits"},
    "shards_per_client": {"digits"},
    "synthetic_alpha": {"synthetic"},
    "synthetic_beta": {"synthetic"},
    "drawers_per_client": {"omniglot"},
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


def _check_dataset_options(cfg: Config) -> None:
    """Refuse an option the chosen dataset ignores (set away from its default), and
    episode sizes larger than the data."""
    data, fed = cfg.data, cfg.federated
    federated = fed is not None
    mode = "a federated" if federated else "a"
    uses = _DATA_USES[(data.name, federated)]
    for key in _EPISODE_KEYS:
        if key not in uses and getattr(data, key) != DataConfig.model_fields[key].default:
            readers = sorted({n for (n, f), keys in _DATA_USES.items() if f == federated and key in keys})
            raise ConfigError(f"data.{key}", getattr(data, key),
                              f"no setting here: {mode} {data.name} run ignores it ({_only(readers)})")
    if fed is None:
        if data.name == "digits":
            _check_digits_episodes(data)
        return
    part = fed.partition
    default = {key: info.default for key, info in PartitionConfig.model_fields.items()}
    for key, readers in _PARTITION_USES.items():
        if data.name not in readers and getattr(part, key) != default[key]:
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


# -- the flat [federated] layout ----------------------------------------------------------
# Before its sections, [federated] held every key itself. Each flat key still loads: it
# moves to its section (old name -> "section.key" under [federated]) with a notice.
# `partition` and `attack` come first: they name a section now, and a string there is the
# flat key (the scheme, the attack's name).
DEPRECATED: dict[str, str] = {
    "partition": "partition.scheme",
    "attack": "attack.name",
    "alpha": "partition.alpha",
    "shards_per_client": "partition.shards_per_client",
    "synthetic_alpha": "partition.synthetic_alpha",
    "synthetic_beta": "partition.synthetic_beta",
    "drawers_per_client": "partition.drawers_per_client",
    "support_size": "partition.support_size",
    "query_size": "partition.query_size",
    "local_procedure": "clients.procedure",
    "local_steps": "clients.local_steps",
    "local_steps_min": "clients.local_steps_min",
    "local_lr": "clients.lr",
    "tasks_per_step": "clients.tasks_per_step",
    "mu": "clients.mu",
    "perfedavg_variant": "clients.perfedavg_variant",
    "dropout_rate": "clients.dropout_rate",
    "straggler_rate": "clients.straggler_rate",
    "compression": "clients.compression",
    "topk_fraction": "clients.topk_fraction",
    "client_batching": "clients.batching",
    "client_chunk": "clients.chunk",
    "strategy": "server.strategy",
    "server_lr": "server.lr",
    "server_momentum": "server.momentum",
    "beta1": "server.beta1",
    "beta2": "server.beta2",
    "tau": "server.tau",
    "aggregator": "robust.rule",
    "trim_fraction": "robust.trim_fraction",
    "byzantine_clients": "robust.byzantine_clients",  # and attack.byzantine_clients under "a little is enough"
    "krum_selected": "robust.krum_selected",
    "geomed_smoothing": "robust.geomed_smoothing",
    "geomed_max_iter": "robust.geomed_max_iter",
    "norm_bound": "robust.norm_bound",
    "malicious_fraction": "attack.fraction",
    "attack_scale": "attack.scale",
    "attack_noise_std": "attack.noise_std",
    "attack_z": "attack.z",
}
_LIE_F = "attack.byzantine_clients"  # the flat byzantine_clients was also the f of "a little is enough"


def _is_flat(key: str, value: Any) -> bool:
    """`federated.<key> = value` is a key of the flat layout (a table under `partition` or
    `attack` is the section itself)."""
    return key in DEPRECATED and not (key in ("partition", "attack") and isinstance(value, dict))


def _attack_name(fed: dict[str, Any]) -> Any:
    attack = fed.get("attack")
    return attack.get("name") if isinstance(attack, dict) else attack


def _targets(old: str, fed: dict[str, Any]) -> list[str]:
    """Where the flat key `old` goes, under [federated], given the rest of the table."""
    if old == "byzantine_clients" and _attack_name(fed) == "little_is_enough":
        return [DEPRECATED[old], _LIE_F]
    return [DEPRECATED[old]]


def deprecation_notice(old: str) -> str:
    """The one line that says where the flat key `federated.<old>` went."""
    new = f"federated.{DEPRECATED[old]}"
    if old == "byzantine_clients":
        new += f" (and federated.{_LIE_F} for the 'little_is_enough' attack)"
    return f"config: federated.{old} is deprecated; use {new}"


def _both(old: str, value: Any, new: str) -> ConfigError:
    return ConfigError(f"federated.{old}", value,
                       f"not together with federated.{new}: it is that key's deprecated name (keep federated.{new})")


def move_deprecated(fed: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A [federated] table with every flat-layout key moved to its section (a copy), and the
    flat keys it held, in DEPRECATED's order; a flat key set together with its new key is a
    ConfigError."""
    fed = {k: dict(v) if isinstance(v, dict) else v for k, v in fed.items()}
    moved = []
    for old in DEPRECATED:
        if old not in fed or not _is_flat(old, fed[old]):
            continue
        value = fed.pop(old)
        for target in _targets(old, fed):
            section, key = target.split(".")
            table = fed.setdefault(section, {})
            if isinstance(table, BaseModel):
                table = fed[section] = table.model_dump(exclude_unset=True)
            if not isinstance(table, dict):
                raise ConfigError(f"federated.{section}", table, f"a table [federated.{section}] (federated.{old} moves there)")
            if key in table:
                raise _both(old, value, target)
            table[key] = value
        moved.append(old)
    return fed, moved


def sectioned(federated: dict[str, Any]) -> dict[str, Any]:
    """The [federated] table in sections from keys given by their flat names (tests and
    scripts that build configs in code), without notices; section tables pass through."""
    return move_deprecated(federated)[0]


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


DEMO = Path(__file__).with_name("demo.toml")


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
