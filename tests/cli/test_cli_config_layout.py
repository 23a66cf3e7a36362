"""The sectioned [federated] layout, and configs written before it.

Every flat key of [federated] (`fedmeta.config.DEPRECATED`) still loads, from a file or
`--set`, lands in its section and says so in one line naming the new key; the old and the
new name of one key together are refused; a run folder whose config.toml is in the flat
layout (as older versions wrote it) resumes and verifies without being rewritten.
"""

from __future__ import annotations

import json
import sys
import tomllib
import warnings
from pathlib import Path
from typing import Any

import pytest
import tomli_w
import torch

from fedmeta.cli import main
from fedmeta.config import DEPRECATED, Config, load_config, sectioned
from fedmeta.errors import ConfigDeprecationWarning, ConfigError

ROOT = Path(__file__).resolve().parents[2]

# flat key -> (a value it accepts, the dataset that reads it, other flat keys it needs)
FLAT = {
    "partition": ("shards", "digits", {}),
    "attack": ("sign_flip", "sinusoid", {"malicious_fraction": 0.2}),
    "alpha": (0.3, "digits", {}),
    "shards_per_client": (3, "digits", {"partition": "shards"}),
    "synthetic_alpha": (0.5, "synthetic", {}),
    "synthetic_beta": (0.25, "synthetic", {}),
    "drawers_per_client": (10, "omniglot", {}),
    "support_size": (7, "digits", {}),
    "query_size": (8, "digits", {}),
    "local_procedure": ("sgd", "sinusoid", {}),
    "local_steps": (3, "sinusoid", {}),
    "local_steps_min": (2, "sinusoid", {}),
    "local_lr": (0.2, "sinusoid", {}),
    "tasks_per_step": (3, "sinusoid", {}),
    "mu": (0.3, "sinusoid", {}),
    "perfedavg_variant": ("hf", "sinusoid", {}),
    "dropout_rate": (0.1, "sinusoid", {}),
    "straggler_rate": (0.2, "sinusoid", {}),
    "compression": ("topk", "sinusoid", {}),
    "topk_fraction": (0.2, "sinusoid", {}),
    "client_batching": ("loop", "sinusoid", {}),
    "client_chunk": (64, "sinusoid", {}),
    "strategy": ("fedadam", "sinusoid", {}),
    "server_lr": (0.3, "sinusoid", {}),
    "server_momentum": (0.5, "sinusoid", {}),
    "beta1": (0.6, "sinusoid", {}),
    "beta2": (0.7, "sinusoid", {}),
    "tau": (0.01, "sinusoid", {}),
    "aggregator": ("median", "sinusoid", {}),
    "trim_fraction": (0.2, "sinusoid", {}),
    "byzantine_clients": (2, "sinusoid", {}),
    "krum_selected": (3, "sinusoid", {}),
    "geomed_smoothing": (0.01, "sinusoid", {}),
    "geomed_max_iter": (50, "sinusoid", {}),
    "norm_bound": (2.0, "sinusoid", {}),
    "malicious_fraction": (0.2, "sinusoid", {"attack": "gaussian"}),
    "attack_scale": (3.0, "sinusoid", {}),
    "attack_noise_std": (0.5, "sinusoid", {}),
    "attack_z": (1.5, "sinusoid", {}),
}
DATA = {"omniglot": {"k_shot": 1, "k_query": 5}, "sinusoid": {"k_shot": 5, "k_query": 5}}


def test_the_table_covers_every_renamed_key():
    assert sorted(FLAT) == sorted(DEPRECATED)


def at(cfg: Config, new: str) -> Any:
    """cfg.federated.<section>.<key> for `new` = "section.key"."""
    section, key = new.split(".")
    return getattr(getattr(cfg.federated, section), key)


def toml_value(value: Any) -> str:
    return tomli_w.dumps({"v": value}).removeprefix("v = ").strip()


def notices(record) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, ConfigDeprecationWarning)]


@pytest.mark.parametrize("where", ["file", "--set"])
@pytest.mark.parametrize("old", list(FLAT))
def test_a_flat_key_loads_in_its_section_with_a_notice(tmp_path, old, where):
    value, data, needs = FLAT[old]
    flat = {old: value, **needs}
    base = {"data": {"name": data, **DATA.get(data, {})}, "federated": {"rounds": 1}}
    if where == "file":
        base["federated"].update(flat)
    path = tmp_path / "old.toml"
    path.write_text(tomli_w.dumps(base))
    overrides = [f"federated.{k}={toml_value(v)}" for k, v in flat.items()] if where == "--set" else []
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = load_config(path, overrides, check_paths=False)
    assert at(cfg, DEPRECATED[old]) == value
    said = notices(record)
    line = f"config: federated.{old} is deprecated; use federated.{DEPRECATED[old]}"
    assert any(n == line or n.startswith(line + " (") for n in said), said
    assert len(said) == len(flat)  # one notice per flat key, nothing else
    assert "\n" not in "".join(said)
    assert cfg == Config.model_validate({**base, "federated": sectioned({"rounds": 1, **flat})})


def test_byzantine_clients_is_also_the_attacks_f_under_a_little_is_enough():
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        cfg = load_config(None, ["privacy.dp='off'", "privacy.secure_aggregation='off'", "federated.aggregator=krum",
                                 "federated.attack=little_is_enough", "federated.malicious_fraction=0.2",
                                 "federated.byzantine_clients=2"], check_paths=False)
    assert cfg.federated.robust.byzantine_clients == cfg.federated.attack.byzantine_clients == 2
    assert ("config: federated.byzantine_clients is deprecated; use federated.robust.byzantine_clients "
            "(and federated.attack.byzantine_clients for the 'little_is_enough' attack)") in notices(record)
    alone = Config.model_validate({"federated": sectioned({"aggregator": "krum", "byzantine_clients": 2})})
    assert alone.federated.robust.byzantine_clients == 2 and alone.federated.attack.byzantine_clients is None


@pytest.mark.parametrize(("text", "overrides", "old"), [
    ("[federated]\nlocal_lr = 0.1\n[federated.clients]\nlr = 0.2\n", [], "local_lr"),
    ("[federated]\nrounds = 1\n", ["federated.local_lr=0.1", "federated.clients.lr=0.2"], "local_lr"),
    ("[federated]\nrounds = 1\n", ["federated.clients.lr=0.2", "federated.local_lr=0.1"], "local_lr"),
    ("[federated]\nrounds = 1\n", ["federated.partition.scheme=dirichlet", "federated.partition=shards"], "partition"),
])
def test_the_old_and_the_new_name_together_are_refused(tmp_path, capsys, text, overrides, old):
    path = tmp_path / "both.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigDeprecationWarning)
        load_config(path, overrides, check_paths=False)
    assert err.value.field == f"federated.{old}"
    assert f"federated.{DEPRECATED[old]}" in err.value.accepted and "\n" not in str(err.value)
    args = ["run", str(path), *[a for o in overrides for a in ("--set", o)], "--out", str(tmp_path / "x")]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"fedmeta: error: {err.value}"


def test_an_old_name_on_the_command_line_overrides_the_files_new_one(tmp_path):
    path = tmp_path / "new.toml"
    path.write_text("[federated.clients]\nlr = 0.2\n")
    with pytest.warns(ConfigDeprecationWarning, match="federated.local_lr is deprecated; use federated.clients.lr"):
        cfg = load_config(path, ["federated.local_lr=0.1"], check_paths=False)
    assert cfg.federated.clients.lr == 0.1


def test_the_cli_prints_each_notice_as_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    args = ["run", "--out", str(tmp_path / "x"), "--no-progress", "--set", "federated.local_lr=0.1",
            "--set", "federated.server_lr=0.5", "--set", "federated.rounds=0"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["config: federated.local_lr is deprecated; use federated.clients.lr",
                   "config: federated.server_lr is deprecated; use federated.server.lr",
                   "fedmeta: error: federated.rounds = 0: greater than or equal to 1"], err


def test_errors_and_typo_hints_name_the_sectioned_key():
    with pytest.raises(ConfigError) as err, warnings.catch_warnings():
        warnings.simplefilter("ignore", ConfigDeprecationWarning)
        load_config(None, ["federated.local_lr=-1"])
    assert err.value.field == "federated.clients.lr"
    for typo, meant in [("federated.clients.lrr", "federated.clients.lr"),
                        ("federated.server.momentun", "federated.server.momentum"),
                        ("federated.robust.trim_fractoin", "federated.robust.trim_fraction"),
                        ("federated.clients.local_lr", "federated.clients.lr"),  # a flat name in its section
                        ("federated.local_lrr", "federated.clients.lr")]:  # a typo of a flat name
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"{typo}=3"])
        assert err.value.field == typo and f"did you mean {meant}?" in err.value.accepted, err.value


def test_every_shipped_config_loads_without_notices():
    shipped = sorted((ROOT / "configs").glob("*.toml"))
    assert len(shipped) > 20
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConfigDeprecationWarning)
        load_config(None, check_paths=False)  # the demo
        for path in shipped:
            cfg = load_config(path, check_paths=False)
            text = path.read_text()
            if cfg.federated is not None:
                assert not set(tomllib.loads(text)["federated"]) & (set(DEPRECATED) - {"partition", "attack"}), path


def test_the_golden_matrix_in_the_flat_layout_still_loads():
    """tests/golden/golden.py writes its configs flat: each loads, with notices, to the
    config its keys name in sections, and round-trips through the sectioned config.toml."""
    sys.path.insert(0, str(ROOT / "tests" / "golden"))
    try:
        from golden import MATRIX
    finally:
        sys.path.remove(str(ROOT / "tests" / "golden"))
    for name, spec in MATRIX.items():
        raw = json.loads(json.dumps(spec["raw"]))
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            cfg = Config.model_validate(raw)
        flat = [k for k in raw["federated"] if k in DEPRECATED]
        assert notices(record) == [f"config: federated.{k} is deprecated; use federated.{DEPRECATED[k]}"
                                   + (" (and federated.attack.byzantine_clients for the 'little_is_enough' attack)"
                                      if k == "byzantine_clients" else "")
                                   for k in DEPRECATED if k in flat], name
        assert cfg == Config.model_validate({**raw, "federated": sectioned(raw["federated"])}), name
        with warnings.catch_warnings():
            warnings.simplefilter("error", ConfigDeprecationWarning)
            assert Config.model_validate(tomllib.loads(cfg.to_toml())) == cfg, name


# -- run folders of the flat layout ----------------------------------------------------------


def flat_toml(cfg: Config) -> str:
    """config.toml as versions before the sections wrote it: every [federated] key flat."""
    dumped = cfg.model_dump(mode="json", exclude_none=True)
    fed = dumped["federated"]
    sections = {s: fed.pop(s) for s in ("partition", "clients", "server", "robust", "attack")}
    for old, new in DEPRECATED.items():
        section, key = new.split(".")
        if key in sections[section]:
            fed[old] = sections[section][key]
    return tomli_w.dumps(dumped)


OLD_RUN = """[data]
name = "sinusoid"
k_shot = 5
k_query = 5
[model]
name = "mlp"
hidden = [16]
[meta]
inner_lr = 0.01
eval_inner_steps = 1
[federated]
rounds = 3
eval_every = 1
n_clients = 6
held_out_clients = 2
clients_per_round = 3
local_steps = 2
tasks_per_step = 2
local_lr = 0.02
strategy = "fedavgm"
server_lr = 0.5
[ledger]
enabled = true
"""


@pytest.fixture
def old_run(tmp_path, monkeypatch):
    """`make(out, stop_at)`: a run of the flat config OLD_RUN whose folder is what a version
    before the sections left: its config.toml flat, the checkpoint and the ledger over those
    bytes; stopped by a failure in round `stop_at` (None: finished)."""
    from fedmeta.federated.runtime import Runtime

    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    source = tmp_path / "old.toml"
    source.write_text(OLD_RUN)

    def make(out: Path, stop_at: int | None) -> Path:
        original, calls = Runtime.run_round, {"n": 0}

        def failing(self):
            calls["n"] += 1
            if calls["n"] == stop_at:
                raise RuntimeError("simulated failure")
            return original(self)

        with monkeypatch.context() as m:
            m.setattr(Config, "to_toml", flat_toml)
            m.setattr(Runtime, "run_round", failing)
            assert main(["run", str(source), "--out", str(out), "--no-progress"]) == (0 if stop_at is None else 1)
        assert "local_lr = 0.02" in (out / "config.toml").read_text()
        return out

    return make


def test_a_flat_run_folder_resumes_to_the_same_model_and_verifies(old_run, tmp_path, capsys):
    stopped = old_run(tmp_path / "stopped", stop_at=2)
    written = (stopped / "config.toml").read_bytes()
    capsys.readouterr()
    assert main(["run", "--resume", str(stopped), "--no-progress"]) == 0
    err = capsys.readouterr().err.splitlines()
    said = [line for line in err if line.startswith("config: ")]
    assert len(said) == 1 and "flat [federated] layout" in said[0] and "left as written" in said[0], err
    assert not any("Warning" in line for line in err), err
    assert (stopped / "config.toml").read_bytes() == written
    whole = tmp_path / "whole"  # the same config, in sections, never stopped
    assert main(["run", str(tmp_path / "old.toml"), "--out", str(whole), "--no-progress"]) == 0
    assert "[federated.clients]" in (whole / "config.toml").read_text()
    mine, theirs = (torch.load(p / "model.pt", weights_only=True) for p in (stopped, whole))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    for folder in (stopped, whole):
        assert main(["ledger", "verify", str(folder)]) == 0, capsys.readouterr().err


def test_resume_of_a_finished_flat_run_says_so(old_run, tmp_path, capsys):
    done = old_run(tmp_path / "done", stop_at=None)
    capsys.readouterr()
    assert main(["run", "--resume", str(done), "--no-progress"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "flat [federated] layout" in err[0] and "already finished" in err[1], err
