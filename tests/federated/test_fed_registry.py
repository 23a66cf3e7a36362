"""One factory builds strategies, robust rules and attacks from their config sections."""

from __future__ import annotations

import dataclasses

import pytest

from fedmeta.config import AttackConfig, RobustConfig, ServerConfig
from fedmeta.errors import BadInput
from fedmeta.federated.attacks import ATTACKS, LittleIsEnough, Scaling
from fedmeta.federated.registry import build, options_of
from fedmeta.federated.robust import ROBUST, MultiKrum, TrimmedMean
from fedmeta.federated.strategies import STRATEGIES, FedAdam, FedAvgM

REGISTRIES = [(STRATEGIES, ServerConfig), (ROBUST, RobustConfig), (ATTACKS, AttackConfig)]


@pytest.mark.parametrize(("registry", "section"), REGISTRIES)
def test_every_option_of_every_class_is_a_key_of_its_section(registry, section):
    for name, cls in registry.items():
        assert set(options_of(cls)) <= set(section.model_fields), (name, options_of(cls))
        build(registry, name, section())  # the section's defaults build every class


def test_classes_are_built_from_their_section():
    server = ServerConfig(strategy="fedavgm", lr=0.5, momentum=0.3, beta1=0.1)
    assert build(STRATEGIES, server.strategy, server) == FedAvgM(lr=0.5, momentum=0.3)
    assert build(STRATEGIES, "fedadam", server) == FedAdam(lr=0.5, beta1=0.1, beta2=0.99, tau=1e-3)
    robust = RobustConfig(rule="multikrum", byzantine_clients=2, trim_fraction=0.3)
    assert build(ROBUST, robust.rule, robust) == MultiKrum(byzantine_clients=2, krum_selected=None)
    assert build(ROBUST, "trimmed_mean", RobustConfig()) == TrimmedMean()  # None: the class default
    attack = AttackConfig(name="little_is_enough", fraction=0.2, scale=3.0, byzantine_clients=2)
    assert build(ATTACKS, attack.name, attack) == LittleIsEnough(byzantine_clients=2, z=None)
    assert build(ATTACKS, "scaling", attack) == Scaling(scale=3.0)


@pytest.mark.parametrize(("registry", "name", "options", "field"), [
    (STRATEGIES, "fedsgd", {}, "federated.server.strategy"),
    (STRATEGIES, "fedavg", {"momentum": 0.5}, "federated.server.momentum"),
    (ROBUST, "bulyan", {}, "federated.robust.rule"),
    (ROBUST, "krum", {"trim_fraction": 0.1}, "federated.robust.trim_fraction"),
    (ROBUST, "trimmed_mean", {"trim_fraction": 0.7}, "federated.robust.trim_fraction"),
    (ATTACKS, "none", {}, "federated.attack.name"),
    (ATTACKS, "gaussian", {"noise_std": -1.0}, "federated.attack.noise_std"),
])
def test_bad_input_names_the_full_dotted_key(registry, name, options, field):
    with pytest.raises(BadInput) as err:
        build(registry, name, options)
    assert err.value.field == field


def test_a_new_rule_is_one_class_and_one_registry_line(monkeypatch, config):
    """What adding a rule takes: its class (a file under federated/robust/) and its line in
    ROBUST; the config accepts its name and its option from [federated.robust]."""

    @dataclasses.dataclass(frozen=True)
    class FirstUpdate:
        norm_bound: float = 1.0

        def __call__(self, updates, weights):
            return updates[0]

    with pytest.raises(ValueError, match="federated.robust.rule = 'first'"):
        config(aggregator="first")
    monkeypatch.setitem(ROBUST, "first", FirstUpdate)
    cfg = config(robust={"rule": "first", "norm_bound": 3.0})
    assert build(ROBUST, cfg.federated.robust.rule, cfg.federated.robust) == FirstUpdate(3.0)


def test_config_names_are_the_registries_keys():
    for field, registry, extra in [("strategy", STRATEGIES, ()), ("rule", ROBUST, ()), ("name", ATTACKS, ("none",))]:
        section = {"strategy": ServerConfig, "rule": RobustConfig, "name": AttackConfig}[field]
        for name in (*extra, *registry):
            section(**{field: name})
        with pytest.raises(ValueError, match=f"{registry.section}.{field} = 'nonesuch'"):
            section(**{field: "nonesuch"})
