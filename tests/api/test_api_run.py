"""`fedmeta.run` is `fedmeta run`: the same files and numbers for the same config, whether
the config is a TOML file, a dict or a `Config`; `out=None` leaves nothing behind."""

import json
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w
import torch
from api_helpers import listing, same_params, tiny

import fedmeta
from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.errors import ConfigError


@pytest.fixture(scope="module")
def cli_and_api(tmp_path_factory):
    """One tiny federated config run by `fedmeta run --out` and by `fedmeta.run(out=...)`."""
    folder = tmp_path_factory.mktemp("runs")
    toml = folder / "tiny.toml"
    toml.write_text(tomli_w.dumps(tiny()))
    assert main(["run", str(toml), "--out", str(folder / "cli"), "--no-progress"]) == 0
    result = fedmeta.run(toml, out=folder / "api", progress=False)
    return toml, folder / "cli", result


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_result_is_the_run_folder_and_the_cli_run(cli_and_api):
    toml, cli, result = cli_and_api
    assert result.run_dir == cli.parent / "api"
    assert result.history == rows(result.run_dir / "metrics.jsonl")
    assert result.history == rows(cli / "metrics.jsonl")  # same numbers as `fedmeta run`
    assert len(result.history) == 2 * 3  # test and train rows at rounds 0, 1, 2
    assert same_params(result.params, torch.load(cli / "model.pt", weights_only=True))
    assert same_params(result.params, torch.load(result.run_dir / "model.pt", weights_only=True))
    assert result.summary == json.loads((result.run_dir / "summary.json").read_text())
    cli_summary = json.loads((cli / "summary.json").read_text())
    assert {k: v for k, v in result.summary.items() if k != "seconds"} == {k: v for k, v in cli_summary.items() if k != "seconds"}
    assert "python" not in result.summary  # nothing came from Python
    assert sorted(p.name for p in result.run_dir.iterdir()) == sorted(p.name for p in cli.iterdir())
    assert (result.run_dir / "config.toml").read_text() == (cli / "config.toml").read_text()
    assert (result.run_dir / "report.html").is_file()
    model_params = dict(result.model.named_parameters())
    assert same_params({k: v.detach() for k, v in model_params.items()}, result.params)


def test_out_none_writes_nothing_and_prints_nothing(cli_and_api, tmp_path, monkeypatch, capfd):
    _, cli, _ = cli_and_api
    work, temp = tmp_path / "work", tmp_path / "temp"
    work.mkdir()
    temp.mkdir()
    (work / "mine.txt").write_text("kept")
    monkeypatch.chdir(work)
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where the run's temporary folder goes
    before = listing(work)
    capfd.readouterr()
    result = fedmeta.run(tiny(), progress=False)
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert listing(work) == before
    assert listing(temp) == []  # the temporary run folder is removed
    assert result.run_dir is None
    assert result.history == rows(cli / "metrics.jsonl")
    assert same_params(result.params, torch.load(cli / "model.pt", weights_only=True))
    page = result.report(tmp_path / "report.html").read_text()  # made from what the Result holds
    assert "data:image/png;base64," in page and "api-tiny" in page
    assert listing(temp) == []


def test_dict_config_and_toml_give_the_same_run(cli_and_api, tmp_path):
    toml, _, _ = cli_and_api
    overrides = {"federated.rounds": 1, "meta": {"inner_lr": 0.02}}
    from_dict = fedmeta.run(tiny(), overrides=overrides, progress=False)
    from_config = fedmeta.run(load_config(toml), overrides=overrides, progress=False)
    from_toml = fedmeta.run(str(toml), overrides=overrides, progress=False)
    assert same_params(from_dict.params, from_config.params)
    assert same_params(from_dict.params, from_toml.params)
    assert from_dict.history == from_config.history == from_toml.history
    assert from_toml.summary["rounds"] == 1
    # the overrides took effect: the same as the config edited by hand
    edited = tiny(rounds=1)
    edited["meta"]["inner_lr"] = 0.02
    by_hand = fedmeta.run(edited, progress=False)
    assert same_params(from_dict.params, by_hand.params)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        ({"meta.inner_stepz": 2}, "meta.inner_stepz"),
        ({"federated.rounds": "3"}, "federated.rounds"),
        ({"federated.rounds": 3.0}, "federated.rounds"),
        ({"meta.inner_lr": -0.1}, "meta.inner_lr"),
        ({"meta.inner_lr": None}, "meta.inner_lr"),
        ({"federated.clients": {"procedur": "sgd"}}, "federated.clients.procedur"),
        ({"meta..inner_lr": 0.1}, "overrides"),
        ({"data.name=x": 1}, "overrides"),
    ],
)
def test_bad_override_is_one_line_naming_the_key(overrides, named, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as info:
        fedmeta.run(tiny(), overrides=overrides, out=tmp_path / "run", progress=False)
    message = str(info.value)
    assert "\n" not in message and message.startswith(named), message
    assert listing(tmp_path) == []


def test_bad_config_values_and_types(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tiny()
    bad["federated"]["rounds"] = 0
    with pytest.raises(ConfigError, match=r"^federated\.rounds = 0"):
        fedmeta.run(bad, progress=False)
    with pytest.raises(ConfigError, match=r"^config = "):
        fedmeta.run(tmp_path / "missing.toml", progress=False)
    with pytest.raises(fedmeta.errors.BadInput, match=r"^config = 42"):
        fedmeta.run(42, progress=False)
    with pytest.raises(ConfigError, match=r"^overrides = "):
        fedmeta.run(tiny(), overrides=["federated.rounds=1"], progress=False)
    assert listing(tmp_path) == []


def test_central_config_is_the_cli_run(tmp_path):
    raw = {"run": {"name": "api-central", "seed": 1}, "data": {"name": "sinusoid", "k_shot": 5, "k_query": 5},
           "model": {"name": "mlp", "hidden": [8]}, "meta": {"meta_batch_size": 4, "eval_inner_steps": 1},
           "train": {"iterations": 4, "eval_every": 2, "eval_tasks": 5}}
    toml = tmp_path / "central.toml"
    toml.write_text(tomli_w.dumps(raw))
    assert main(["run", str(toml), "--out", str(tmp_path / "cli"), "--no-progress"]) == 0
    result = fedmeta.run(raw, progress=False)
    assert result.history == rows(tmp_path / "cli" / "metrics.jsonl")
    assert same_params(result.params, torch.load(tmp_path / "cli" / "model.pt", weights_only=True))
    with pytest.raises(fedmeta.errors.BadInput, match=r"^strategy = .*a federated config"):
        fedmeta.run(raw, strategy=object(), progress=False)


def test_to_pandas_or_a_clear_import_error(cli_and_api, monkeypatch):
    _, _, result = cli_and_api
    try:
        import pandas
    except ImportError:
        pandas = None
    if pandas is not None:
        frame = result.to_pandas()
        assert len(frame) == len(result.history) and list(frame["round"]) == [r["round"] for r in result.history]
    monkeypatch.setitem(sys.modules, "pandas", None)  # as where pandas is not installed
    with pytest.raises(ImportError, match="needs pandas"):
        result.to_pandas()


@pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")
def test_accountant_logs_do_not_leak(caplog, capfd):
    """dp-accounting logs through absl (orders it cannot converge on); a run keeps it quiet
    and gives the logger back as it found it."""
    import logging

    absl = logging.getLogger("absl")
    absl.setLevel(logging.NOTSET)  # as in a fresh process (an earlier CLI run in this one sets it)
    privacy = {"dp": "central", "noise_multiplier": 0.8, "clip_norm": 0.5, "target_epsilon": 50.0, "noise_seed": 3}
    capfd.readouterr()
    with caplog.at_level(logging.DEBUG):
        result = fedmeta.run(tiny(privacy=privacy), progress=False)
    assert result.summary["epsilon"] > 0
    assert [r for r in caplog.records if r.name.startswith("absl")] == []
    assert capfd.readouterr() == ("", "")
    assert absl.level == logging.NOTSET
