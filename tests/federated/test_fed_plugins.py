"""A network, a server strategy and a robust rule named by config: an import path
"package.module:name" or the short name of a `fedmeta.plugins` entry point. They run as the
same objects given from Python do, and a path that does not import, or names something that
does not follow its protocol, is one line naming the dotted field (exit 2, no folder).

The plugins are defined here and named "test_fed_plugins:..." (this folder is on sys.path:
pytest's default import mode puts a test file's folder there).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import sys

import pytest
import tomli_w
import torch
from torch import nn

import fedmeta
from fedmeta.cli import main
from fedmeta.config import Config
from fedmeta.errors import ConfigError
from fedmeta.federated.registry import PLUGIN_GROUP, build
from fedmeta.federated.robust import ROBUST
from fedmeta.federated.runtime import Runtime
from fedmeta.params import weighted_mean
from fedmeta.train import build as central_build

HERE = __name__  # "test_fed_plugins"


def make_mlp(x_shape, n_outputs):
    """A model factory: (x_shape, n_outputs) -> nn.Module."""
    width = 1
    for size in x_shape:
        width *= size
    return nn.Sequential(nn.Flatten(), nn.Linear(width, 12), nn.Tanh(), nn.Linear(12, n_outputs))


def wrong_outputs(x_shape, n_outputs):
    return nn.Linear(x_shape[0], n_outputs + 1)


@dataclasses.dataclass
class HalfStep:
    """θ + lr·½·Δ̄; `lr` is read from [federated.server], `calls` is not a key there."""

    lr: float = 1.0
    calls: int = 0

    def init(self, params):
        return {}

    def apply(self, params, delta, state):
        return {k: params[k] + 0.5 * self.lr * delta[k] for k in params}, state


class FirstHalfMean:
    """Not a dataclass (so no options): the weighted mean of the first half of the updates."""

    def __call__(self, updates, weights):
        n = max(1, len(updates) // 2)
        return weighted_mean(updates[:n], weights[:n])


class NotAStrategy:
    def init(self, params):
        return {}


NOT_A_CLASS = 3


def tiny(**sections) -> dict:
    raw = {
        "run": {"name": "plugins", "seed": 0},
        "data": {"name": "sinusoid", "k_shot": 5, "k_query": 5},
        "model": {"name": "mlp", "hidden": [16, 16]},
        "meta": {"inner_lr": 0.01, "eval_inner_steps": 2},
        "federated": {"rounds": 2, "n_clients": 8, "held_out_clients": 4, "clients_per_round": 4, "eval_every": 1,
                      "clients": {"local_steps": 2, "tasks_per_step": 2, "lr": 0.01}},
    }
    for key, value in sections.items():
        raw[key] = {**raw[key], **value}
    return raw


def fed(**federated) -> dict:
    return tiny(federated={**tiny()["federated"], **federated})


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def run_rounds(runtime: Runtime, rounds: int = 2):
    for _ in range(rounds):
        runtime.run_round()
    return runtime.params


def test_this_module_imports_by_its_name():
    assert sys.modules[HERE].make_mlp is make_mlp


def test_import_path_strategy_equals_the_same_class_from_python():
    cfg = Config.model_validate(fed(server={"strategy": f"{HERE}:HalfStep", "lr": 0.5}))
    by_path = Runtime(cfg)
    assert by_path.server.strategy == HalfStep(lr=0.5)  # its field `lr` read from the section
    assert by_path.provenance == {}  # the config names it: nothing came from Python
    plain = Config.model_validate(fed(server={"lr": 0.5}))
    by_object = Runtime(plain, strategy=HalfStep(lr=0.5))
    fedavg = run_rounds(Runtime(plain))
    assert same(run_rounds(by_path), run_rounds(by_object))
    assert not same(by_path.params, fedavg)


def test_import_path_robust_rule_equals_the_same_object_from_python():
    cfg = Config.model_validate(fed(robust={"rule": f"{HERE}:FirstHalfMean"}))
    assert isinstance(build(ROBUST, cfg.federated.robust.rule, cfg.federated.robust), FirstHalfMean)
    by_path = Runtime(cfg)
    by_object = Runtime(Config.model_validate(fed()), robust=FirstHalfMean())
    assert same(run_rounds(by_path), run_rounds(by_object))


def test_model_factory_by_path_equals_the_factory_from_python_federated_and_central():
    cfg = Config.model_validate(tiny(model={"name": f"{HERE}:make_mlp"}))
    plain = Config.model_validate(tiny())
    by_path, by_object = Runtime(cfg), Runtime(plain, model=make_mlp)
    assert isinstance(by_path.clients.model, nn.Sequential)
    assert same(run_rounds(by_path), run_rounds(by_object))
    central = {k: v for k, v in tiny(model={"name": f"{HERE}:make_mlp"}).items() if k != "federated"}
    setup = central_build(Config.model_validate(central))
    torch.manual_seed(0)
    assert same(setup.meta, dict(make_mlp((1,), 1).named_parameters()))


def test_fedmeta_run_records_the_import_paths_in_the_folder(tmp_path):
    raw = tiny(model={"name": f"{HERE}:make_mlp"})
    raw["federated"]["server"] = {"strategy": f"{HERE}:HalfStep"}
    result = fedmeta.run(raw, out=tmp_path / "run", progress=False)
    saved = (tmp_path / "run" / "config.toml").read_text()
    assert f'"{HERE}:make_mlp"' in saved and f'"{HERE}:HalfStep"' in saved
    assert "python" not in result.summary  # reproducible from config.toml alone
    again = fedmeta.run(Config.model_validate(raw), progress=False)
    assert same(result.params, again.params)


def test_cli_runs_import_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    raw = fed(robust={"rule": f"{HERE}:FirstHalfMean"}, rounds=1)
    raw["model"] = {"name": f"{HERE}:make_mlp"}
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(raw))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == 1


BAD = {
    "module-missing": ("federated.server.strategy", "nosuchpkg.x:Y", "cannot import nosuchpkg.x (ModuleNotFoundError"),
    "attribute-missing": ("federated.server.strategy", f"{HERE}:Nope", f"module {HERE} has no attribute Nope"),
    "not-a-strategy": ("federated.server.strategy", f"{HERE}:NotAStrategy", "init(params) -> state and apply"),
    "strategy-instance": ("federated.server.strategy", f"{HERE}:NOT_A_CLASS", "a class with init"),
    "robust-not-callable": ("federated.robust.rule", f"{HERE}:NotAStrategy", "instances are callable"),
    "robust-function": ("federated.robust.rule", f"{HERE}:make_mlp", "a class whose instances"),
    "no-attribute-part": ("federated.robust.rule", f"{HERE}:", "a 'package.module:name' import path"),
    "model-not-callable": ("model.name", f"{HERE}:NOT_A_CLASS", "a callable factory"),
    "model-module-missing": ("model.name", "nosuchpkg:f", "cannot import nosuchpkg"),
    "unknown-short-name": ("federated.server.strategy", "fednova", "entry point 'strategy.<name>'"),
}


def _set(field: str, value: str) -> dict:
    raw = fed()
    *parents, key = field.split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
    node[key] = value
    return raw


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_path_is_one_line_naming_the_field(case):
    field, value, says = BAD[case]
    with pytest.raises(ConfigError) as err:
        fedmeta.run(_set(field, value), progress=False)
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{field} = {value!r}: "), line
    assert says in line, line


@pytest.mark.parametrize("case", ["module-missing", "not-a-strategy", "model-not-callable"])
def test_cli_bad_path_exits_2_before_any_folder(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    field, value, says = BAD[case]
    out = tmp_path / "x"
    assert main(["run", "--set", f'{field}="{value}"', "--set", "federated.rounds=1", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedmeta: error: {field} = {value!r}: "), err
    assert says in err[0], err
    assert not out.exists()


def test_a_factory_whose_network_does_not_fit_is_refused_naming_model_name():
    with pytest.raises(fedmeta.errors.BadInput) as err:
        fedmeta.run(tiny(model={"name": f"{HERE}:wrong_outputs"}), progress=False)
    assert str(err.value).startswith(f"model.name = '{HERE}:wrong_outputs': a network with 1 output(s)"), err.value


class FakeEntryPoint:
    def __init__(self, name: str, target: str):
        self.name, self.value, self.group = name, target, PLUGIN_GROUP

    def load(self):
        module, _, attr = self.value.partition(":")
        return getattr(importlib.import_module(module), attr)


@pytest.fixture
def entry_points(monkeypatch):
    points = [FakeEntryPoint("strategy.halfstep", f"{HERE}:HalfStep"),
              FakeEntryPoint("robust.firsthalf", f"{HERE}:FirstHalfMean"),
              FakeEntryPoint("model.tinymlp", f"{HERE}:make_mlp"),
              FakeEntryPoint("strategy.broken", "nosuchpkg.x:Y"),
              FakeEntryPoint("strategy.fedavg", f"{HERE}:HalfStep")]  # a built-in name wins

    def fake(**params):
        return [p for p in points if p.group == params.get("group")]

    monkeypatch.setattr(importlib.metadata, "entry_points", fake)


def test_entry_points_make_short_names_usable(entry_points):
    cfg = Config.model_validate(tiny(model={"name": "tinymlp"}, federated={
        **tiny()["federated"], "server": {"strategy": "halfstep"}, "robust": {"rule": "firsthalf"}}))
    runtime = Runtime(cfg)
    assert runtime.server.strategy == HalfStep()
    assert isinstance(runtime.server.aggregation.rule, FirstHalfMean)
    assert isinstance(runtime.clients.model, nn.Sequential)
    by_object = Runtime(Config.model_validate(tiny()), model=make_mlp, strategy=HalfStep(), robust=FirstHalfMean())
    assert same(run_rounds(runtime), run_rounds(by_object))
    assert type(Runtime(Config.model_validate(fed())).server.strategy).__name__ == "FedAvg"


def test_an_entry_point_that_does_not_load_is_one_line(entry_points):
    with pytest.raises(ConfigError, match=r"^federated.server.strategy = 'broken': cannot load entry point "
                                          r"strategy.broken = nosuchpkg.x:Y \(ModuleNotFoundError"):
        fedmeta.run(fed(server={"strategy": "broken"}), progress=False)


def test_cli_factory_whose_network_does_not_fit_exits_2_before_any_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(tiny(model={"name": f"{HERE}:wrong_outputs"})))
    out = tmp_path / "x"
    assert main(["run", str(path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedmeta: error: model.name = '{HERE}:wrong_outputs': "), err
    assert not out.exists()


# -- a dataset by config: a factory (cfg, generator) -> FederatedData --------------------------
def digits_again(cfg, generator):
    """The config's own federated digits, built by a plugin: the same clients the built-in makes."""
    from fedmeta.data.federated import federated_digits

    return federated_digits(cfg.federated, generator)


def too_few_clients(cfg, generator):
    data = digits_again(cfg, generator)
    return type(data)(data.train[1:], data.held_out, data.kind, data.n_outputs, data.x_shape)


def raising_factory(cfg, generator):
    raise OSError("the hospital's share is offline")


def digits_config(name: str) -> dict:
    return {"run": {"name": "plugin-data", "seed": 1}, "data": {"name": name},
            "model": {"name": "mlp", "hidden": [16]}, "meta": {"algorithm": "fomaml", "inner_lr": 0.1,
                                                                "eval_inner_steps": 2},
            "federated": {"rounds": 2, "n_clients": 4, "held_out_clients": 2, "clients_per_round": 3,
                          "partition": {"support_size": 5, "query_size": 5},
                          "clients": {"procedure": "fedmeta", "local_steps": 2, "tasks_per_step": 2}}}


def test_a_dataset_factory_by_path_equals_the_built_in_dataset():
    by_plugin = fedmeta.run(digits_config(f"{HERE}:digits_again"), progress=False)
    built_in = fedmeta.run(digits_config("digits"), progress=False)
    assert same(by_plugin.params, built_in.params) and by_plugin.history == built_in.history


@pytest.mark.parametrize("name, text", [
    (f"{HERE}:too_few_clients", "data.train = 3 clients: federated.n_clients = 4"),
    (f"{HERE}:raising_factory", "OSError: the hospital's share is offline"),
    (f"{HERE}:NOT_A_CLASS", "a callable factory (cfg, generator) -> FederatedData"),
    ("nosuchpkg.data:make", "cannot import nosuchpkg.data"),
])
def test_a_dataset_factory_that_does_not_fit_is_one_line_naming_data_name(tmp_path, capsys, monkeypatch, name, text):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(digits_config(name)))
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedmeta: error: data.name = ") and text in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_dataset_plugin_needs_a_federated_run():
    central = {k: v for k, v in digits_config(f"{HERE}:digits_again").items() if k != "federated"}
    with pytest.raises(ConfigError, match="^data.name = .*a federated run"):
        fedmeta.run(central, progress=False)
