"""Robust aggregation and simulated attacks in runs: a robust rule keeps the model near the
clean run where the mean is dragged away, the attackers are the configured share of
clients, and robust rules refuse masked sums and client-level DP up front."""

import pytest
import torch

from fedmeta.config import load_config
from fedmeta.errors import ConfigError
from fedmeta.federated.runtime import Runtime


def run(config, rounds=3, **fed):
    cfg = config("sinusoid", rounds=rounds, n_clients=20, clients_per_round=10, held_out_clients=2, **fed)
    runtime = Runtime(cfg)
    infos = [runtime.run_round().row for _ in range(rounds)]
    return runtime, infos


def distance(a, b):
    return float(torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in a)))


@pytest.mark.parametrize("aggregator", ["median", "trimmed_mean", "multikrum", "geometric_median"])
def test_robust_rule_resists_a_scaling_attack(config, aggregator):
    clean, _ = run(config)
    start = Runtime(config("sinusoid", n_clients=20, clients_per_round=10, held_out_clients=2)).params
    attack = {"attack": "scaling", "attack_scale": 100.0, "malicious_fraction": 0.2}
    dragged, infos = run(config, **attack)
    robust, _ = run(config, aggregator=aggregator, byzantine_clients=2 if "krum" in aggregator else None,
                    trim_fraction=0.25 if aggregator == "trimmed_mean" else None, **attack)
    moved = distance(clean.params, start)
    assert distance(dragged.params, clean.params) > 3 * moved  # the mean is dragged far away
    assert distance(robust.params, clean.params) < moved  # the robust rule stays near the clean run
    assert sum(i["malicious"] for i in infos) > 0 and len(dragged.transport.malicious) == 4


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["federated.robust.rule='median'"], "federated.robust.rule"),  # the demo runs SecAgg+
        (["federated.robust.rule='krum'", "privacy.dp='off'", "privacy.secure_aggregation='ckks'"], "federated.robust.rule"),
        (["federated.robust.rule='median'", "privacy.secure_aggregation='off'"], "federated.robust.rule"),  # and DP
        (["federated.attack.name='scaling'"], "federated.attack.fraction"),  # who attacks?
        (["federated.attack.fraction=0.1"], "federated.attack.name"),  # with what?
    ],
)
def test_incompatible_robust_options_are_config_errors(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field and "\n" not in str(err.value)
