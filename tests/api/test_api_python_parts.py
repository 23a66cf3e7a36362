"""Parts given as Python objects: a model (module or factory), a server strategy, a robust
rule and client steps run, are recorded in summary.json, and are refused in one line
naming the argument, before anything is written, when they cannot work."""

import dataclasses
import json

import pytest
import torch
from api_helpers import listing, same_params, tiny
from torch import nn

import fedmeta
from fedmeta.build import model_for
from fedmeta.config import Config
from fedmeta.errors import BadInput
from fedmeta.federated.runtime import Runtime
from fedmeta.params import weighted_mean


def tiny_net(x_shape, n_outputs):
    """A model factory: (x_shape, n_outputs) -> nn.Module."""
    return nn.Sequential(nn.Flatten(), nn.Linear(x_shape[0], 12), nn.Tanh(), nn.Linear(12, n_outputs))


@dataclasses.dataclass
class HalfStep:
    """θ + ½·Δ̄, counting its calls."""

    calls: int = 0

    def init(self, params):
        return {}

    def apply(self, params, delta, state):
        self.calls += 1
        return {k: params[k] + 0.5 * delta[k] for k in params}, state


class CountingMean:
    """The weighted mean, counting the updates it saw."""

    def __init__(self):
        self.seen = 0

    def __call__(self, updates, weights):
        self.seen += len(updates)
        return weighted_mean(updates, weights)


class Tally:
    """A client step that passes the update through and counts rounds in its state."""

    def init(self, params):
        return {"rounds": torch.zeros(())}

    def apply(self, upload, state, ctx):
        return upload, {"rounds": state["rounds"] + 1}


def test_model_object_equals_the_config_named_model(tmp_path):
    cfg = Config.model_validate(tiny())
    named = fedmeta.run(cfg, progress=False)
    model = model_for(cfg, (1,), 1)  # the config's network, as the run builds it: same architecture and init
    given = fedmeta.run(cfg, model=model, out=tmp_path / "run", progress=False)
    assert same_params(given.params, named.params)
    assert given.history == named.history
    assert given.summary["python"] == {"model": "fedmeta.models.MLP"}
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["python"] == {"model": "fedmeta.models.MLP"}
    assert given.model is not model and type(given.model) is type(model)


def test_factory_strategy_robust_and_steps_from_python(tmp_path):
    strategy, robust = HalfStep(), CountingMean()
    result = fedmeta.run(tiny(), model=tiny_net, strategy=strategy, robust=robust, client_steps={"tally": Tally()},
                         out=tmp_path / "run", progress=False)
    assert strategy.calls == 2 and robust.seen == 2 * 4  # 2 rounds of 4 clients
    assert sorted(result.params) == ["1.bias", "1.weight", "3.bias", "3.weight"]
    assert isinstance(result.model, nn.Sequential)
    assert torch.equal(result.model[1].weight.detach(), result.params["1.weight"])
    here = __name__
    assert result.summary["python"] == {
        "model": f"{here}.tiny_net",
        "strategy": f"{here}.HalfStep",
        "robust": f"{here}.CountingMean",
        "client_steps": [{"name": "tally", "step": f"{here}.Tally"}],
    }
    assert result.summary["strategy"] == f"{here}.HalfStep"  # the strategy that ran, not the config's name
    # the factory is called after seeding torch with run.seed: the same run again is the same run
    again = fedmeta.run(tiny(), model=tiny_net, strategy=HalfStep(), robust=CountingMean(),
                        client_steps={"tally": Tally()}, progress=False)
    assert same_params(again.params, result.params)


def test_a_checkpoint_with_python_parts_is_not_resumed_from_the_config():
    cfg = Config.model_validate(tiny())
    state = Runtime(cfg, strategy=HalfStep()).state_dict()
    with pytest.raises(BadInput, match=r"^--resume = .*strategy"):
        Runtime(cfg).load_state_dict(state)
    Runtime(cfg, strategy=HalfStep()).load_state_dict(state)  # with the same parts it loads
    plain = Runtime(cfg)
    assert "python" not in plain.state_dict()  # a config-only checkpoint is as before


def raising_factory(x_shape, n_outputs):
    raise RuntimeError("no network today")


class NoApply:
    def init(self, params):
        return {}


class Step:
    def init(self, params):
        return None

    def apply(self, upload, state, ctx):
        return upload, state


@pytest.mark.parametrize(
    ("kwargs", "named", "says"),
    [
        ({"model": 42}, "model = 42", "nn.Module"),
        ({"model": raising_factory}, "model = ", "no network today"),
        ({"model": lambda x_shape, n: "mlp"}, "model = ", "returned str"),
        ({"model": nn.Linear(1, 3)}, "model = 'torch.nn.modules.linear.Linear'", "1 output(s)"),
        ({"model": nn.Linear(5, 1)}, "model = ", "a zero batch raised"),
        ({"strategy": NoApply()}, "strategy = ", "apply"),
        ({"strategy": HalfStep}, "strategy = ", "pass an instance"),
        ({"robust": 0.5}, "robust = 0.5", "callable"),
        ({"robust": CountingMean}, "robust = ", "pass an instance"),
        ({"client_steps": {"compress": Step()}}, "client_steps = 'compress'", "other than"),
        ({"client_steps": {"mine": NoApply()}}, "client_steps['mine'] = ", "apply"),
        ({"client_steps": [Step()]}, "client_steps = ", "a dict"),
    ],
)
def test_bad_python_argument_is_refused_before_anything_is_written(kwargs, named, says, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput) as info:
        fedmeta.run(tiny(), out=tmp_path / "run", progress=False, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(named) and says in message, message
    assert listing(tmp_path) == []


@pytest.mark.parametrize("privacy", [{"dp": "central", "noise_multiplier": 0.5, "clip_norm": 1.0, "noise_seed": 1},
                                     {"secure_aggregation": "secagg"}])
def test_robust_rule_refused_with_client_dp_or_secure_aggregation(privacy, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInput) as info:
        fedmeta.run(tiny(privacy=privacy), robust=CountingMean(), out=tmp_path / "run", progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith("robust = ") and "no robust rule" in message, message
    assert listing(tmp_path) == []


def test_anil_needs_a_head(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = tiny()
    raw["meta"]["algorithm"] = "anil"
    raw["federated"]["clients"]["procedure"] = "fedmeta"
    with pytest.raises(BadInput, match=r"^model = .*head"):
        fedmeta.run(raw, model=tiny_net, progress=False)
    assert listing(tmp_path) == []


def test_metasgd_rates_stay_in_params_and_model_holds_the_network():
    raw = tiny(rounds=1)
    raw["meta"]["algorithm"] = "metasgd"
    raw["federated"]["clients"]["procedure"] = "fedmeta"
    result = fedmeta.run(raw, progress=False)
    network = {k: v.detach() for k, v in result.model.named_parameters()}
    rates = {k for k in result.params if k.startswith("inner_lr.")}
    assert rates and rates == {f"inner_lr.{k}" for k in network}
    assert same_params(network, {k: v for k, v in result.params.items() if k not in rates})
