"""The configuration of a run: pydantic models, TOML in, validated, errors name the field.

A run is described by one TOML file (see `configs/`), optionally changed by `--set a.b=v`
overrides, and saved resolved as `config.toml` in the run folder, so `--resume` and a
third party reading the folder see exactly what ran.

- `sections.py`: the sections and `Config`;
- `rules.py`: rules that span sections, and what each dataset reads;
- `layout.py`: the flat [federated] layout of earlier versions, moved with a notice;
- `loading.py`: `load_config`, overrides, one-line errors naming the dotted field.
"""

from fedmeta.config.layout import DEPRECATED, deprecation_notice, move_deprecated, sectioned
from fedmeta.config.loading import DEMO, load_config
from fedmeta.config.rules import (
    DIGITS_CLASS_SIZES,
    DIGITS_EXAMPLES,
    EXAMPLE_DATA,
    EXAMPLE_DP_ALGORITHMS,
    EXAMPLE_DP_PROCEDURES,
    check_example_dp,
)
from fedmeta.config.sections import (
    MAX_SEED,
    AttackConfig,
    ClientsConfig,
    Config,
    DataConfig,
    FederatedConfig,
    LedgerConfig,
    MetaConfig,
    ModelConfig,
    PartitionConfig,
    PrivacyConfig,
    RobustConfig,
    RunConfig,
    Section,
    ServerConfig,
    TrainConfig,
)

__all__ = [
    "DEMO", "DEPRECATED", "DIGITS_CLASS_SIZES", "DIGITS_EXAMPLES", "EXAMPLE_DATA", "EXAMPLE_DP_ALGORITHMS",
    "EXAMPLE_DP_PROCEDURES", "MAX_SEED", "AttackConfig", "ClientsConfig", "Config", "DataConfig", "FederatedConfig",
    "LedgerConfig", "MetaConfig", "ModelConfig", "PartitionConfig", "PrivacyConfig", "RobustConfig", "RunConfig",
    "Section", "ServerConfig", "TrainConfig", "check_example_dp", "deprecation_notice", "load_config",
    "move_deprecated", "sectioned",
]
