"""fedmeta from Python: `run(config, ...) -> Result`, the same run as `fedmeta run`.

`run` resolves the config as the command line does (a TOML file, or a dict or a `Config`
laid out the same way, with `overrides` by dotted key applied as `--set` applies them),
builds the run (`federated.runtime.Runtime` or `train.build`), checks every argument
before anything is written, and drives it with the same code: `run_federated` or
`train`, into a run folder. With `out` that folder is the one `fedmeta run --out` writes,
report included; without it the run goes to a temporary folder that is removed, and the
`Result` keeps what it read from it.

Parts given as Python objects rather than named in the config (`model`, `strategy`,
`robust`, `client_steps`, `data`, `procedure`) are recorded by name under `"python"` in `summary.json`: the
config alone does not reproduce such a run (docs/extending.md).
"""

from __future__ import annotations

import base64
import copy
import json
import logging
import os
import re
import sys
import tempfile
from collections.abc import Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedmeta.errors import BadInput, ConfigError, shown

if TYPE_CHECKING:  # importing torch is what `import fedmeta` avoids
    import torch
    from torch import nn

    from fedmeta.config import Config

REPORT_INPUTS = ("config.toml", "metrics.jsonl", "summary.json", "personalization.json", "ledger.db")
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*")


@dataclass
class Result:
    """What a run produced.

    - `summary`: `summary.json` as a dict (with `"python"` when parts came from Python);
    - `history`: the rows of `metrics.jsonl`, in order (`to_pandas()` for a DataFrame);
    - `params`: the final meta-parameters, name -> tensor (`model.pt`); under Meta-SGD they
      include the learned per-parameter inner rates (`inner_lr.` + the parameter's name);
    - `model`: the network with the final parameters loaded: a copy of the run's module
      (the config's, or the one given as `model`) whose `named_parameters()` are those of
      `params`; Meta-SGD's rates are not module parameters and stay in `params` only;
    - `run_dir`: the run folder, or None when the run was not kept (`out=None`).
    """

    summary: dict[str, Any]
    history: list[dict[str, Any]]
    params: dict[str, torch.Tensor]
    model: nn.Module
    run_dir: Path | None = None
    files: dict[str, bytes] = field(default_factory=dict, repr=False)  # what the report is made from

    def to_pandas(self):
        """`history` as a pandas DataFrame, one row per metrics row."""
        try:
            import pandas
        except ImportError:
            raise ImportError("Result.to_pandas() needs pandas (pip install pandas); "
                              "Result.history holds the same rows as a list of dicts") from None
        return pandas.DataFrame(self.history)

    def report(self, path: str | os.PathLike) -> Path:
        """Write the run's HTML report to `path`, one self-contained file (its figures are
        embedded), as `fedmeta report` makes it from the run folder. Works for a run that
        was not kept: the report is made from the files the `Result` holds."""
        from fedmeta.report import write_report

        path = Path(path)
        name = self.run_dir.name if self.run_dir is not None else _run_name(self.files.get("config.toml", b""))
        with tempfile.TemporaryDirectory(prefix="fedmeta-report-") as tmp:
            folder = Path(tmp) / name
            folder.mkdir()
            for file, data in self.files.items():
                (folder / file).write_bytes(data)
            page = write_report(folder).read_text()

            def embed(match: re.Match) -> str:
                figure = folder / match.group(1)
                if not figure.is_file():
                    return match.group(0)
                return f"src='data:image/png;base64,{base64.b64encode(figure.read_bytes()).decode()}'"

            page = re.sub(r"src='([^'/]+\.png)'", embed, page)
        path.write_text(page)
        return path


def _run_name(config_toml: bytes) -> str:
    import tomllib

    try:
        return str(tomllib.loads(config_toml.decode()).get("run", {}).get("name") or "run")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError, AttributeError):
        return "run"


def run(config: str | os.PathLike | Mapping[str, Any] | Config, *, overrides: Mapping[str, Any] | None = None,
        out: str | os.PathLike | None = None, progress: bool = True, model: Any = None, strategy: Any = None,
        robust: Any = None, client_steps: Mapping[str, Any] | None = None, data: Any = None,
        procedure: Any = None) -> Result:
    """Run `config` as `fedmeta run` does and return its `Result`.

    config: a TOML path, a dict laid out as the TOML, or a `fedmeta.config.Config`.
    overrides: dotted keys -> values, e.g. {"federated.rounds": 3}, applied as `--set`.
    out: the run folder to write (as `fedmeta run --out`); None keeps nothing on disk.
    progress: show the progress bar; False prints nothing but genuine warnings.
    model: an `nn.Module` (a deep copy is trained; its parameters are the initial ones)
        or a factory `(x_shape, n_outputs) -> nn.Module` (called after seeding torch with
        `run.seed`), in place of the config's network.
    strategy: an `(init, apply)` server strategy in place of `federated.server.strategy`.
    robust: a callable `(updates, weights) -> update` in place of `federated.robust.rule`.
    client_steps: name -> `(init, apply)` client step, run after the DP step.
    data: the clients, in place of the config's dataset: a `FederatedData` (e.g. from
        `fedmeta.data.federated.from_tensors`), whose clients sample episodes.
    procedure: the clients' local procedure in place of `federated.clients.procedure`: an
        object with `step(params, anchor, episodes) -> params`, or a factory
        `(model, kind) -> such an object`.

    Bad input of any kind is a one-line `fedmeta.errors.BadInput` (`ConfigError` for the
    config) naming the field or argument, raised before anything is written.
    """
    import torch

    absl = logging.getLogger("absl")  # dp-accounting's per-order RDP notes
    level, threads = absl.level, torch.get_num_threads()
    absl.setLevel(logging.ERROR)
    try:
        return _run(config, overrides, out, progress, model, strategy, robust, client_steps, data, procedure)
    finally:
        absl.setLevel(level)
        torch.set_num_threads(threads)  # the run sets its own (fedmeta.threads); the caller's comes back


def noise_notice(cfg: Config) -> str | None:
    """What a DP run whose noise is not seeded says before it starts (None: nothing to say)."""
    if cfg.privacy.dp == "off" or cfg.privacy.noise_seed is not None:
        return None
    return ("privacy: DP noise is drawn from the operating system's randomness, so two runs differ; "
            "set privacy.noise_seed for a reproducible experiment (never in deployment)")


def drive(cfg: Config, folder: Any, runtime: Any, *, resume: bool = False, show_progress: bool = True) -> dict:
    """Run a built run (`Runtime` or `train.build`'s setup) into its folder: the one step
    `fedmeta run` and `run` share."""
    from fedmeta.federated.driver import run_federated
    from fedmeta.train import train

    if cfg.federated is not None:
        return run_federated(cfg, folder, resume=resume, show_progress=show_progress, runtime=runtime)
    return train(cfg, folder, resume=resume, show_progress=show_progress, setup=runtime)


def _run(config, overrides, out, progress, model, strategy, robust, client_steps, data, procedure) -> Result:
    from fedmeta.federated.runtime import Runtime, provenance

    cfg = resolve_config(config, overrides)
    if cfg.federated is not None:
        steps = dict(client_steps) if isinstance(client_steps, Mapping) else client_steps  # anything else: refused
        runtime: Any = Runtime(cfg, strategy=strategy, client_steps=steps, robust=robust, model=model, data=data,
                               procedure=procedure)
        network, python, cfg = runtime.clients.model, runtime.provenance, runtime.cfg
    else:
        for name, value in (("strategy", strategy), ("robust", robust), ("client_steps", client_steps), ("data", data),
                            ("procedure", procedure)):
            if value is not None:
                raise BadInput(name, shown(value), "a federated config (a [federated] section); this config is a "
                                                    "central run, which has no server or clients")
        runtime = _central_setup(cfg, model)
        network, python = runtime.learner.model, provenance(model=model)
    with ExitStack() as stack:
        if out is None:
            target = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="fedmeta-run-"))) / cfg.run.name
        else:
            target = Path(out)
        folder = _create(target, cfg, python)
        stack.callback(folder.close)
        if progress and out is not None:
            print(f"run folder: {folder.path}", file=sys.stderr)
        if progress and (notice := noise_notice(cfg)):
            print(notice, file=sys.stderr)
        try:
            drive(cfg, folder, runtime, show_progress=progress)
        except Exception as err:
            if out is not None and not python:  # the config alone rebuilds the run
                err.add_note(f"the run folder can be continued: fedmeta run --resume {folder.path}")
            raise
        if out is not None:
            from fedmeta.report import write_report

            write_report(folder.path)
        return _result(folder.path, network, None if out is None else folder.path)


def _create(target: Path, cfg: Config, python: dict[str, Any]):
    """The run folder (`RunDir.create`), whose `summary.json` also records `python`."""
    from fedmeta.rundir import RunDir, RunFolderError

    class Folder(RunDir):
        def write_json(self, name: str, obj: Any) -> None:
            if name == "summary.json" and python:
                obj = {**obj, "python": python}
            super().write_json(name, obj)

    try:
        return Folder.create(target, cfg)
    except BadInput as err:
        if err.field != "--out":
            raise
        kind = RunFolderError if isinstance(err, RunFolderError) else ConfigError
        accepted = err.accepted.replace("use --resume to continue it", "`fedmeta run --resume` continues it")
        raise kind("out", err.value, accepted) from None


def _central_setup(cfg: Config, model: Any):
    """`train.build(cfg)`, with `model` (a module or a factory) in place of the config's network."""
    from fedmeta.train import Setup, build

    if model is None:
        return build(cfg)
    from fedmeta.build import learner_for, network_for
    from fedmeta.data import make_tasks
    from fedmeta.models import parameters_of

    train_tasks, test_tasks = make_tasks(cfg.data, "train"), make_tasks(cfg.data, "test")
    net = network_for(cfg, train_tasks.x_shape, train_tasks.n_outputs, model)
    learner = learner_for(cfg, net, train_tasks.kind)
    return Setup(train_tasks, test_tasks, learner, learner.init(parameters_of(net)))


def _result(path: Path, network: nn.Module, run_dir: Path | None) -> Result:
    import torch

    files = {name: (path / name).read_bytes() for name in REPORT_INPUTS if (path / name).is_file()}
    history = [json.loads(line) for line in files["metrics.jsonl"].decode().splitlines() if line.strip()]
    params = torch.load(path / "model.pt", weights_only=True)
    model = copy.deepcopy(network).cpu()  # with the parameters of model.pt, on the CPU
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in params:
                p.copy_(params[name])
    return Result(json.loads(files["summary.json"]), history, params, model, run_dir, files)


# -- the config -------------------------------------------------------------------------------
def resolve_config(config: Any, overrides: Mapping[str, Any] | None = None) -> Config:
    """`config` (a TOML path, a dict laid out as the TOML, or a `Config`) with `overrides`
    (dotted key -> value) applied, validated by `load_config` as `fedmeta run` validates
    its file and `--set`s: the same one-line `ConfigError` naming the dotted field."""
    from fedmeta.config import Config, load_config

    items = _override_items(overrides)
    if isinstance(config, (str, os.PathLike)):
        return load_config(config, items)
    if isinstance(config, Config):
        text = config.to_toml()
    elif isinstance(config, Mapping):
        text = _toml(config)
    else:
        raise BadInput("config", shown(config), "a TOML path, a dict laid out as the TOML, or a fedmeta.config.Config")
    with tempfile.TemporaryDirectory(prefix="fedmeta-config-") as tmp:
        path = Path(tmp) / "config.toml"
        path.write_text(text, encoding="utf-8")
        return load_config(path, items)


def _plain(value: Any, key: str) -> Any:
    """`value` as tomli_w writes it: None dropped (the default), paths as strings."""
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{key}.{k}" if key else str(k), v, "a key that is a string")
            if v is not None:
                out[k] = _plain(v, f"{key}.{k}" if key else k)
        return out
    if isinstance(value, (list, tuple)):
        return [_plain(v, key) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (bool, int, float, str)):
        return value
    raise ConfigError(key or "config", shown(value), "a TOML value: a string, number, boolean, list or table")


def _toml(raw: Mapping[str, Any]) -> str:
    import tomli_w

    return tomli_w.dumps(_plain(raw, ""))


def _override_items(overrides: Mapping[str, Any] | None) -> list[str]:
    """Overrides as `--set` items (`key=<TOML value>`); a table value sets each of its keys."""
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise ConfigError("overrides", type(overrides).__name__,
                          "a dict of dotted keys -> values, e.g. {'federated.rounds': 3}")
    import tomli_w

    items = []
    for key, value in overrides.items():
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError("overrides", shown(key), "dotted keys of the config, e.g. 'meta.inner_lr'")
        if isinstance(value, Mapping):
            items += _override_items({f"{key}.{k}": v for k, v in value.items()})
            continue
        if value is None:
            raise ConfigError(key, None, "a TOML value (None has none; leave the key out for its default)")
        text = tomli_w.dumps({"v": _plain(value, key)})
        if not text.startswith("v = "):
            raise ConfigError(key, shown(value), "a TOML value: a string, number, boolean or list")
        items.append(f"{key}={text[4:].strip()}")
    return items
