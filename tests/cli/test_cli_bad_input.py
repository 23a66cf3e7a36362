"""Bad input of every kind: exit 2, one stderr line `fedmeta: error: <field> = <value>: <accepted>`
naming the full dotted field and the value, and nothing written (no run folder)."""

from __future__ import annotations

import errno
import json
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.config import DIGITS_CLASS_SIZES, DIGITS_EXAMPLES, load_config
from fedmeta.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
SINUSOID = str(ROOT / "configs" / "sinusoid-maml.toml")
DIGITS = str(ROOT / "configs" / "digits-maml.toml")
KEY = "ab" * 32  # a well-formed Ed25519 public key (hex)
# Small enough that a case slipping through validation finishes quickly instead of hanging.
FAST = ["--set", "train.iterations=2", "--set", "train.eval_every=1", "--set", "train.eval_tasks=2"]
FAST_FED = ["--set", "federated.rounds=1", "--set", "federated.eval_every=1"]


def _file(tmp: Path, name: str, data: bytes) -> str:
    path = tmp / name
    path.write_bytes(data)
    return str(path)


# id -> (arguments after `fedmeta run` given tmp_path, the field named, the value shown)
RUN_CASES = {
    "non-utf8-config": (lambda t: [_file(t, "latin1.toml", b'[run]\nname = "caf\xe9"\n'), *FAST],
                        "config", "latin1.toml"),
    "inner-lr-inf": (lambda t: [SINUSOID, *FAST, "--set", "meta.inner_lr=inf"], "meta.inner_lr", "inf"),
    "outer-lr-nan": (lambda t: [SINUSOID, *FAST, "--set", "train.outer_lr=nan"], "train.outer_lr", "nan"),
    "server-lr-inf": (lambda t: [*FAST_FED, "--set", "federated.server.lr=inf"], "federated.server.lr", "inf"),
    "secagg-clip-inf": (lambda t: [*FAST_FED, "--set", "privacy.secagg_clip=inf"], "privacy.secagg_clip", "inf"),
    "clip-norm-inf": (lambda t: [*FAST_FED, "--set", "privacy.clip_norm=inf"], "privacy.clip_norm", "inf"),
    "noise-inf": (lambda t: [*FAST_FED, "--set", "privacy.noise_multiplier=inf"], "privacy.noise_multiplier", "inf"),
    "seed-negative": (lambda t: [SINUSOID, *FAST, "--set", "run.seed=-1"], "run.seed", "-1"),
    "seed-2^63": (lambda t: [SINUSOID, *FAST, "--set", "run.seed=9223372036854775808"], "run.seed", "9223372036854775808"),
    "noise-seed-negative": (lambda t: [*FAST_FED, "--set", "privacy.noise_seed=-5"], "privacy.noise_seed", "-5"),
    "threads-100000": (lambda t: [SINUSOID, *FAST, "--set", "run.threads=100000"], "run.threads", "100000"),
    "client-keys-missing": (
        lambda t: [*FAST_FED, "--set", f'ledger.participants={{ "0" = "{KEY}" }}',
                   "--set", f'ledger.client_keys="{t / "no-keys"}"'],
        "ledger.client_keys", "no-keys"),
    "server-key-not-a-key": (
        lambda t: [*FAST_FED, "--set", f'ledger.server_key="{_file(t, "k.pem", b"not a key")}"'], "ledger.server_key", "k.pem"),
    "server-key-under-a-file": (
        lambda t: [*FAST_FED, "--set", f'ledger.server_key="{_file(t, "f", b"x")}/k.pem"'], "ledger.server_key", "k.pem"),
    "participant-key-not-hex": (
        lambda t: [*FAST_FED, "--set", 'ledger.participants={ "0" = "zz" }'], "ledger.participants.0", "zz"),
    "rounds-bool": (lambda t: ["--set", "federated.rounds=true"], "federated.rounds", "True"),
    "rounds-string-in-toml": (
        lambda t: [_file(t, "s.toml", b'[data]\nname = "digits"\n[federated]\nrounds = "3"\n')],
        "federated.rounds", "'3'"),
    "inner-steps-float": (lambda t: [SINUSOID, *FAST, "--set", "meta.inner_steps=2.0"], "meta.inner_steps", "2.0"),
    "name-with-nul": (lambda t: [SINUSOID, *FAST, "--set", r'run.name="a\u0000b"'], "run.name", "a\\x00b"),
    "name-empty": (lambda t: [SINUSOID, *FAST, "--set", 'run.name=""'], "run.name", "''"),
    "name-with-slash": (lambda t: [SINUSOID, *FAST, "--set", 'run.name="../up"'], "run.name", "../up"),
    "unterminated-string": (lambda t: [SINUSOID, *FAST, "--set", 'run.name="abc'], "run.name", '"abc'),
    "n-way-on-federated-digits": (lambda t: [*FAST_FED, "--set", "data.n_way=3"], "data.n_way", "3"),
    "rotations-on-sinusoid": (lambda t: [SINUSOID, *FAST, "--set", "data.rotations=false"], "data.rotations", "False"),
    "support-size-beyond-data": (
        lambda t: [*FAST_FED, "--set", "federated.partition.support_size=100000"], "federated.partition.support_size", "100000"),
    "support-size-on-sinusoid": (
        lambda t: [str(ROOT / "configs" / "fed-sinusoid-fedmeta.toml"), *FAST_FED, "--set", "federated.partition.support_size=7"],
        "federated.partition.support_size", "7"),
    "natural-partition-on-digits": (
        lambda t: [*FAST_FED, "--set", "federated.partition.scheme=natural"], "federated.partition.scheme", "natural"),
    "data-dir-missing": (lambda t: [*FAST_FED, "--data-dir", "/nonexistent"], "data.data_dir", "/nonexistent"),
    "data-dir-missing-sinusoid": (
        lambda t: [SINUSOID, *FAST, "--set", 'data.data_dir="/nonexistent"'], "data.data_dir", "/nonexistent"),
    "typo-gets-nearest-key": (lambda t: [*FAST_FED, "--set", "federated.round=3"], "federated.round", "3"),
    "secure-sum-of-one-client": (
        lambda t: [*FAST_FED, "--set", "federated.clients_per_round=1"], "federated.clients_per_round", "1"),
    "omniglot-drawers-per-client": (
        lambda t: [str(ROOT / "configs" / "fed-omniglot-fedmeta.toml"), *FAST_FED,
                   "--set", "federated.partition.drawers_per_client=3"],
        "federated.partition.drawers_per_client", "3"),
    "digits-test-classes": (lambda t: [DIGITS, *FAST, "--set", "data.test_classes=[42]"], "data.test_classes", "42"),
    "digits-n-way": (lambda t: [DIGITS, *FAST, "--set", "data.n_way=20"], "data.n_way", "20"),
    "digits-k-query": (lambda t: [DIGITS, *FAST, "--set", "data.k_query=500"], "data.k_query", "500"),
    "digits-more-clients-than-pairs": (
        lambda t: [*FAST_FED, "--set", "federated.n_clients=5000"], "federated.n_clients", "5000"),
    "digits-shards-beyond-data": (
        lambda t: [*FAST_FED, "--set", "federated.partition.scheme='shards'",
                   "--set", "federated.partition.shards_per_client=1000"],
        "federated.partition.shards_per_client", "1000"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_run_refuses_bad_input_before_writing(tmp_path, capsys, monkeypatch, case):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    args, field, value = RUN_CASES[case]
    out = tmp_path / "x"
    assert main(["run", *args(tmp_path), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"fedmeta: error: {field} = "), err
    assert value in err[0], err
    assert not out.exists()


@pytest.mark.parametrize(("typo", "meant"), [("federated.round", "federated.rounds"), ("feder.rounds", "federated"),
                                             ("meta.inner_stepz", "meta.inner_steps"), ("privacy.noise_sed", "privacy.noise_seed")])
def test_a_typo_names_the_nearest_key_not_all_of_them(typo, meant):
    with pytest.raises(ConfigError) as err:
        load_config(None, [f"{typo}=3"])
    assert f"did you mean {meant}?" in err.value.accepted
    assert "n_clients" not in err.value.accepted


def test_every_float_key_refuses_infinity():
    """Model-wide: no float setting takes inf or nan (none of them means anything there)."""
    from fedmeta.config import Config, Section

    def sections(model=Config, prefix=""):
        """Every section, nested ones ([federated.clients], ...) included, by dotted name."""
        for name, info in model.model_fields.items():
            ann = info.annotation
            cls = next((a for a in (ann, *getattr(ann, "__args__", ())) if isinstance(a, type) and issubclass(a, Section)), None)
            if cls is not None:
                yield f"{prefix}{name}", cls
                yield from sections(cls, f"{prefix}{name}.")

    tried = 0
    for section, cls in sections():
        for key, info in cls.model_fields.items():
            if "float" not in str(info.annotation):
                continue
            with pytest.raises(ConfigError) as err:
                load_config(None, [f"{section}.{key}=inf"])
            assert err.value.field == f"{section}.{key}"
            tried += 1
    assert tried > 30


def test_digits_sizes_match_the_data():
    from fedmeta.data.digits import digits_arrays

    labels = digits_arrays()[1]
    assert len(labels) == DIGITS_EXAMPLES
    assert tuple(labels.bincount().tolist()) == DIGITS_CLASS_SIZES


def test_ignored_options_at_their_defaults_still_load(tmp_path):
    """A resolved config.toml lists every key; the defaults of ignored ones must load back."""
    cfg = load_config(None, ["federated.rounds=1"])
    path = tmp_path / "config.toml"
    path.write_text(cfg.to_toml())
    assert load_config(path) == cfg


def test_data_dir_that_exists_is_accepted_whatever_the_dataset(tmp_path):
    assert load_config(None, [f"data.data_dir={str(tmp_path)!r}"]).data.data_dir == str(tmp_path)


# -- other commands --------------------------------------------------------------------------


def _run_folder(tmp: Path, metrics: str) -> Path:
    folder = tmp / "r"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text(metrics)
    return folder


def _one_error(capsys, rc: int, field: str, value: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"fedmeta: error: {field} = "), err
    assert value in err[0], err
    assert rc == 2
    return err[0]


def test_report_with_a_malformed_metrics_line(tmp_path, capsys):
    good = json.dumps({"round": 0, "split": "test", "loss_before": 1.0, "loss_after": 0.5})
    folder = _run_folder(tmp_path, good + "\n{\"round\": 1, \"spl\n")
    rc = main(["report", str(folder)])
    _one_error(capsys, rc, "metrics.jsonl line 2", '{"round": 1')
    assert not (folder / "report.html").exists()


def test_report_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    """A disk that fills while the report is written: one line (exit 1, not bad input)."""
    good = json.dumps({"round": 0, "split": "test", "loss_before": 1.0, "loss_after": 0.5})
    folder = _run_folder(tmp_path, good + "\n")

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    from matplotlib.figure import Figure

    monkeypatch.setattr(Figure, "savefig", full)
    assert main(["report", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("fedmeta: failed: ") and "No space left" in err[0], err
    assert "fedmeta report" in err[0]


def test_report_html_on_a_full_disk_is_one_line(tmp_path, capsys, monkeypatch):
    folder = _run_folder(tmp_path, "")

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    assert main(["report", str(folder)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left" in err[0], err


def test_keys_create_into_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    rc = main(["keys", "create", "--out", str(target), "--name", "1"])
    _one_error(capsys, rc, "--out", str(target))


def test_keys_create_under_a_file(tmp_path, capsys):
    target = tmp_path / "file"
    target.write_text("x")
    rc = main(["keys", "create", "--out", str(target / "keys"), "--name", "1"])
    _one_error(capsys, rc, "--out", str(target / "keys"))


def test_keys_create_in_an_unwritable_place(tmp_path, capsys, monkeypatch):
    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", denied)
    rc = main(["keys", "create", "--out", str(tmp_path / "keys"), "--name", "1"])
    line = _one_error(capsys, rc, "--out", str(tmp_path / "keys"))
    assert "Permission denied" in line


def test_keys_create_twice_names_the_option(tmp_path, capsys):
    assert main(["keys", "create", "--out", str(tmp_path), "--name", "1"]) == 0
    capsys.readouterr()
    rc = main(["keys", "create", "--out", str(tmp_path), "--name", "1"])
    _one_error(capsys, rc, "--name", "1")


@pytest.mark.parametrize("command", ["epsilon", "noise"])
def test_privacy_steps_are_bounded(capsys, command):
    from fedmeta.privacy.accountant import MAX_PLD_STEPS

    first = ["--noise-multiplier", "1.0"] if command == "epsilon" else ["--target-epsilon", "3", "--accountant", "pld"]
    rc = main(["privacy", command, *first, "--sample-rate", "0.01", "--steps", "1000000000000", "--delta", "1e-5"])
    line = _one_error(capsys, rc, "--steps", "1000000000000")
    assert f"{MAX_PLD_STEPS:,}" in line or str(MAX_PLD_STEPS) in line


def test_ledger_verify_refuses_a_url_that_is_not_one(tmp_path, capsys):
    rc = main(["ledger", "verify", str(tmp_path), "--eth-url", "notaurl"])
    _one_error(capsys, rc, "--eth-url", "notaurl")


@pytest.mark.parametrize("under", [False, True], ids=["a-file", "under-a-file"])
def test_data_download_into_a_file(tmp_path, capsys, under):
    target = tmp_path / "file"
    target.write_text("x")
    where = target / "sub" if under else target
    rc = main(["data", "download", "omniglot", "--data-dir", str(where)])
    _one_error(capsys, rc, "--data-dir", str(where))


def test_data_download_an_unknown_part_names_the_option(tmp_path, capsys):
    rc = main(["data", "download", "omniglot", "--data-dir", str(tmp_path / "d"), "--part", "nope"])
    _one_error(capsys, rc, "--part", "nope")
    assert not (tmp_path / "d").exists()


def test_report_with_a_summary_that_is_not_an_object(tmp_path, capsys):
    folder = _run_folder(tmp_path, "")
    (folder / "summary.json").write_text("[1, 2")
    rc = main(["report", str(folder)])
    _one_error(capsys, rc, "summary.json", "summary.json")


def test_privacy_epsilon_pld_refuses_where_the_distribution_would_not_fit(capsys):
    rc = main(["privacy", "epsilon", "--noise-multiplier", "0.5", "--sample-rate", "1", "--steps", "100000",
               "--delta", "1e-5"])
    line = _one_error(capsys, rc, "--steps", "100000")
    assert "PLD" in line


def test_privacy_epsilon_rdp_only_takes_many_steps(capsys):
    assert main(["privacy", "epsilon", "--noise-multiplier", "1", "--sample-rate", "0.01",
                 "--steps", "1000000000000", "--delta", "1e-5", "--accountant", "rdp"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith("epsilon (RDP) = ")


def test_run_whose_report_hits_a_full_disk_ends_in_one_line(tmp_path, capsys, monkeypatch):
    """The run is done when the report is written: a full disk then is one failure line (exit 1)."""
    from matplotlib.figure import Figure

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", full)
    out = tmp_path / "x"
    assert main(["run", SINUSOID, *FAST, "--out", str(out), "--no-progress"]) == 1
    err = [line for line in capsys.readouterr().err.strip().splitlines() if not line.startswith("run folder: ")]
    assert len(err) == 1 and err[0].startswith("fedmeta: failed: cannot write the report") and "ENOSPC" in err[0], err
    assert (out / "model.pt").is_file()


def test_set_with_bytes_that_are_not_utf8(tmp_path):
    """argv bytes that are not UTF-8 (here 0xff) reach Python as surrogates; refused in one line."""
    import subprocess
    import sys

    out = tmp_path / "x"
    proc = subprocess.run(
        [sys.executable, "-m", "fedmeta", "run", SINUSOID, "--set", b"run.name=\xff".decode("utf-8", "surrogateescape"),
         "--out", str(out)], capture_output=True, timeout=120)
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and err[0].startswith("fedmeta: error: --set = "), err
    assert not out.exists()


def test_fedmeta_home_that_is_a_file(tmp_path, capsys, monkeypatch):
    """The ledger's default key goes to $FEDMETA_HOME/server_key.pem: that must be possible."""
    home = tmp_path / "home"
    home.write_text("x")
    monkeypatch.setenv("FEDMETA_HOME", str(home))
    out = tmp_path / "x"
    rc = main(["run", *FAST_FED, "--out", str(out), "--no-progress"])
    _one_error(capsys, rc, "ledger.server_key", "server_key.pem")
    assert not out.exists()
