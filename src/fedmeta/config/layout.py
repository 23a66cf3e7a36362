"""The flat [federated] layout of earlier versions: every old key, where it lives now, and
the move (with a one-line deprecation notice naming the new key)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from fedmeta.errors import ConfigError

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
