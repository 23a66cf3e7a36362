"""`run.device`: validated in the config, resolved on this machine before anything is
written, and on the CPU the very same run as without it. With CUDA: the same runs to float
tolerance, and every file (model.pt, checkpoint.pt) holds CPU tensors."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch

import fedmeta
from fedmeta.api import resolve_config
from fedmeta.cli import main
from fedmeta.device import available, resolve
from fedmeta.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")
ROOT = Path(__file__).resolve().parents[1]
CUDA = torch.cuda.is_available()
MPS = torch.backends.mps.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

FEDERATED = {
    "run": {"seed": 0},
    "data": {"name": "sinusoid", "k_shot": 5, "k_query": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "meta": {"inner_lr": 0.01, "eval_inner_steps": 2},
    "federated": {"rounds": 3, "n_clients": 8, "held_out_clients": 4, "clients_per_round": 4, "eval_every": 1,
                  "clients": {"local_steps": 2, "tasks_per_step": 2, "lr": 0.01}},
}
DIGITS = {
    "run": {"seed": 0},
    "data": {"name": "digits", "test_classes": [5, 6, 7, 8, 9]},
    "model": {"name": "mlp", "hidden": [32, 32]},
    "meta": {"inner_lr": 0.1, "eval_inner_steps": 2},
    "federated": {"rounds": 3, "n_clients": 10, "held_out_clients": 3, "clients_per_round": 4, "eval_every": 1,
                  "partition": {"support_size": 10, "query_size": 10},
                  "clients": {"local_steps": 2, "tasks_per_step": 2, "lr": 0.05}},
}
CENTRAL = {
    "run": {"seed": 0},
    "data": {"name": "sinusoid", "k_shot": 5, "k_query": 5},
    "model": {"name": "mlp", "hidden": [16, 16]},
    "meta": {"meta_batch_size": 4, "eval_inner_steps": 2},
    "train": {"iterations": 6, "eval_every": 3, "eval_tasks": 8},
}
CONV = {
    "run": {"seed": 0},
    "data": {"name": "digits", "n_way": 5, "k_shot": 1, "k_query": 5, "test_classes": [5, 6, 7, 8, 9]},
    "model": {"name": "conv4", "filters": 8},
    "meta": {"inner_lr": 0.1, "eval_inner_steps": 1, "meta_batch_size": 4},
    # SGD: Adam turns the rounding noise of a conv bias's gradient before batch norm (zero in
    # exact arithmetic) into steps of ±lr, whose signs differ between devices
    "train": {"iterations": 4, "eval_every": 2, "eval_tasks": 8, "outer_optimizer": "sgd", "outer_lr": 0.1},
}
EXAMPLE_DP = {**DIGITS, "meta": {**DIGITS["meta"], "algorithm": "fomaml"},
              "privacy": {"dp": "example", "noise_multiplier": 1.0, "example_sample_rate": 0.5, "noise_seed": 7}}


def with_(raw: dict, **sections: dict) -> dict:
    """A deep copy of `raw` with the given keys of its sections (and their tables) replaced."""

    def merge(into: dict, keys: dict) -> dict:
        for key, value in keys.items():
            into[key] = merge(into.get(key, {}), value) if isinstance(value, dict) else value
        return into

    return merge(copy.deepcopy(raw), sections)


def tensors(tree: Any) -> list[torch.Tensor]:
    """Every tensor in nested dicts, lists and tuples."""
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, dict):
        return [t for v in tree.values() for t in tensors(v)]
    if isinstance(tree, (list, tuple)):
        return [t for v in tree for t in tensors(v)]
    return []


def assert_files_on_cpu(folder: Path) -> None:
    for name in ("model.pt", "checkpoint.pt"):
        found = tensors(torch.load(folder / name, weights_only=True))
        assert found and all(t.device.type == "cpu" for t in found), name


def timeless(value: Any) -> Any:
    """A row or summary without wall-clock figures."""
    if isinstance(value, dict):
        return {k: timeless(v) for k, v in value.items() if "seconds" not in k}
    if isinstance(value, list):
        return [timeless(v) for v in value]
    return value


# -- the option -------------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["gpu", "CUDA", "cuda:", "cuda:x", "cuda:-1", "cuda:01", "cpu:0", "", "auto "])
def test_bad_device_strings_are_refused_naming_run_device(value):
    with pytest.raises(ConfigError) as err:
        resolve_config(with_(CENTRAL, run={"device": value}))
    assert err.value.field == "run.device" and "'cuda:<index>'" in err.value.accepted


def test_a_device_that_is_not_a_string_is_refused():
    with pytest.raises(ConfigError) as err:
        resolve_config(with_(CENTRAL, run={"device": 0}))
    assert err.value.field == "run.device"


@pytest.mark.parametrize("value", ["auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps"])
def test_device_strings_that_load(value):
    assert resolve_config(with_(CENTRAL, run={"device": value})).run.device == value


def test_unset_device_leaves_config_toml_as_before():
    assert "device" not in resolve_config(CENTRAL).to_toml()
    assert 'device = "cpu"' in resolve_config(with_(CENTRAL, run={"device": "cpu"})).to_toml()


def test_auto_resolves_to_the_first_available():
    expected = "cuda" if CUDA else "mps" if MPS else "cpu"
    assert resolve(None) == resolve("auto") == torch.device(expected)
    assert resolve("cpu") == torch.device("cpu")
    assert available()[0] == "cpu"


def test_mps_resolution_and_example_dp_there(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve(None) == resolve("mps") == torch.device("mps")
    with pytest.raises(ConfigError) as err:
        resolve("mps", example_dp=True)
    assert err.value.field == "run.device" and "float64" in err.value.accepted
    assert resolve("cpu", example_dp=True) == torch.device("cpu")


ABSENT = [pytest.param("cuda:99", id="cuda:99"),
          pytest.param("cuda", id="cuda", marks=pytest.mark.skipif(CUDA, reason="CUDA is available")),
          pytest.param("mps", id="mps", marks=pytest.mark.skipif(MPS, reason="MPS is available"))]


@pytest.mark.parametrize("device", ABSENT)
@pytest.mark.parametrize("config", ["sinusoid-maml.toml", "fed-sinusoid-fedmeta.toml"])
def test_an_absent_device_is_refused_before_the_run_folder(tmp_path, capsys, monkeypatch, config, device):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    out = tmp_path / "run"
    assert main(["run", str(ROOT / "configs" / config), "--set", f"run.device='{device}'", "--out", str(out),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fedmeta: error: run.device = '{device}': "), err
    assert "available: cpu" in err[0]
    assert not out.exists()


# -- the CPU: the same run, bit for bit ---------------------------------------------------------
@pytest.mark.parametrize("raw", [FEDERATED, with_(FEDERATED, federated={"clients": {"batching": "loop"}}), EXAMPLE_DP,
                                 CENTRAL], ids=["federated-vmap", "federated-loop", "example-dp", "central"])
def test_device_cpu_is_the_default_run_bit_for_bit(tmp_path, monkeypatch, raw):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # "auto" on a machine without accelerators
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    default = fedmeta.run(raw, progress=False)
    cpu = fedmeta.run(with_(raw, run={"device": "cpu"}), out=tmp_path / "cpu", progress=False)
    assert default.params.keys() == cpu.params.keys()
    assert all(torch.equal(default.params[k], cpu.params[k]) for k in default.params)
    assert timeless(default.history) == timeless(cpu.history)
    assert timeless(default.summary) == timeless(cpu.summary)
    assert_files_on_cpu(tmp_path / "cpu")


# -- CUDA: the same runs to float tolerance ------------------------------------------------------
def assert_same_run(cuda: Any, cpu: Any, rtol: float = 1e-3, atol: float = 1e-4) -> None:
    """Parameters and losses equal to float tolerance, accuracies within one prediction of
    an evaluation client, counts, bytes and ε equal."""
    assert all(p.device.type == "cpu" for p in cuda.params.values())
    assert all(p.device.type == "cpu" for p in cuda.model.parameters())
    torch.testing.assert_close(cuda.params, cpu.params, rtol=rtol, atol=atol)
    assert len(cuda.history) == len(cpu.history)
    for a, b in zip(cuda.history, cpu.history, strict=True):
        assert a.keys() == b.keys()
        for key, value in b.items():
            if key.startswith("loss") or key == "meta_loss":
                assert a[key] == pytest.approx(value, rel=10 * rtol, abs=10 * atol), key
            elif key.startswith("acc"):
                assert a[key] == pytest.approx(value, abs=0.1), key
            elif not isinstance(value, float) or key == "epsilon":
                assert a[key] == value, key


@needs_cuda
@pytest.mark.parametrize("raw", [FEDERATED, with_(FEDERATED, federated={"clients": {"batching": "loop"}}), DIGITS,
                                 EXAMPLE_DP, with_(FEDERATED, privacy={"dp": "central", "noise_seed": 3})],
                         ids=["sinusoid-vmap", "sinusoid-loop", "digits", "example-dp", "client-dp"])
def test_cuda_federated_run_matches_cpu(tmp_path, raw):
    cpu = fedmeta.run(with_(raw, run={"device": "cpu"}), progress=False)
    cuda = fedmeta.run(with_(raw, run={"device": "cuda"}), out=tmp_path / "cuda", progress=False)
    assert_same_run(cuda, cpu)
    assert_files_on_cpu(tmp_path / "cuda")
    assert 'device = "cuda"' in (tmp_path / "cuda" / "config.toml").read_text()


@needs_cuda
@pytest.mark.parametrize("raw", [CENTRAL, with_(CENTRAL, meta={"batching": "loop", "algorithm": "metasgd"}),
                                 with_(CENTRAL, meta={"algorithm": "reptile"}), CONV],
                         ids=["maml-vmap", "metasgd-loop", "reptile", "conv4-digits"])
def test_cuda_central_run_matches_cpu(tmp_path, monkeypatch, raw):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # float32 convolutions, as on the CPU
    cpu = fedmeta.run(with_(raw, run={"device": "cpu"}), progress=False)
    cuda = fedmeta.run(with_(raw, run={"device": "cuda"}), out=tmp_path / "cuda", progress=False)
    assert_same_run(cuda, cpu)
    assert_files_on_cpu(tmp_path / "cuda")


@needs_cuda
def test_cuda_central_run_resumes_from_its_cpu_checkpoint(tmp_path, monkeypatch):
    """A run killed after its first evaluation resumes on the device from CPU tensors (the
    Adam state included) to the uninterrupted run's result."""
    from fedmeta.meta.base import MetaLearner

    raw = with_(CENTRAL, run={"device": "cuda"})
    full = fedmeta.run(raw, progress=False)
    original, calls = MetaLearner.meta_gradient, {"n": 0}

    def failing(self, meta, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("simulated crash")
        return original(self, meta, batch)

    monkeypatch.setattr(MetaLearner, "meta_gradient", failing)
    with pytest.raises(RuntimeError):
        fedmeta.run(raw, out=tmp_path / "broken", progress=False)
    state = torch.load(tmp_path / "broken" / "checkpoint.pt", weights_only=True)
    assert all(t.device.type == "cpu" for t in tensors(state))
    monkeypatch.setattr(MetaLearner, "meta_gradient", original)
    assert main(["run", "--resume", str(tmp_path / "broken"), "--no-progress"]) == 0
    resumed = torch.load(tmp_path / "broken" / "model.pt", weights_only=True)
    torch.testing.assert_close(resumed, full.params)
