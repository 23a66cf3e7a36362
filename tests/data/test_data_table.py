"""The user's own table (`data.name = "table"`): a client per owner, numeric features
standardized by each client's own rows, categorical ones one-hot over the shared vocabulary,
a full private federated run through the CLI, and every refusal one line before any folder."""

from __future__ import annotations

import csv
import json
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import tomli_w
import torch

from fedmeta.cli import main
from fedmeta.config import Config, load_config
from fedmeta.data.federated import ExampleClient, make_federated
from fedmeta.errors import ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::fedmeta.privacy.noise.InsecureNoiseWarning")

HEADER = ["hospital", "age", "ward", "dose", "outcome"]
SCALES = {"alpha": 1000.0, "beta": 0.001, "gamma": 1.0}  # one hospital in the thousands, one near 0
WARDS = ["er", "general", "icu"]


def hospitals(rows_each: int = 30, seed: int = 0) -> list[list]:
    """Three hospitals whose `age` is recorded on very different scales, a categorical `ward`,
    a numeric `dose` and a binary outcome."""
    rng = random.Random(seed)
    rows = []
    for name, scale in SCALES.items():
        for _ in range(rows_each):
            age, ward, dose = rng.gauss(5, 2), rng.choice(WARDS), rng.gauss(120, 10)
            outcome = "bad" if (age > 5) != (ward == "icu") else "good"
            rows.append([name, age * scale, ward, dose, outcome])
    return rows


def write_csv(path: Path, rows: list[list], header: list[str] = HEADER) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def raw_config(path: Path, **data) -> dict:
    return {
        "run": {"name": "table", "seed": 0},
        "data": {"name": "table", "path": str(path), "client_column": "hospital", "label_column": "outcome", **data},
        "model": {"name": "mlp", "hidden": [16]},
        "meta": {"algorithm": "fomaml", "inner_lr": 0.1, "eval_inner_steps": 2},
        "federated": {"rounds": 2, "n_clients": 2, "held_out_clients": 1, "clients_per_round": 2, "eval_every": 1,
                      "partition": {"support_size": 5, "query_size": 5},
                      "clients": {"procedure": "fedmeta", "local_steps": 2, "tasks_per_step": 2}},
    }


def load(path: Path, **data):
    cfg = Config.model_validate(raw_config(path, **data))
    return make_federated(cfg, torch.Generator().manual_seed(0))


def test_each_owner_is_a_client_and_numeric_features_use_its_own_statistics(tmp_path):
    rows = hospitals()
    data = load(write_csv(tmp_path / "h.csv", rows))
    assert [len(c.x) for c in data.train + data.held_out] == [30, 30, 30]
    assert all(isinstance(c, ExampleClient) for c in data.train + data.held_out)
    assert data.kind == "classification" and data.n_outputs == 2 and data.x_shape == (5,)  # age, 3 wards, dose
    for client, name in zip(data.train + data.held_out, SCALES):  # sorted: alpha, beta | gamma held out
        mine = [r for r in rows if r[0] == name]
        for col, raw in ((0, 1), (4, 3)):  # encoded column, raw column
            values = np.array([r[raw] for r in mine])
            expected = (values - values.mean()) / values.std()
            np.testing.assert_allclose(client.x[:, col].numpy(), expected, atol=1e-5)
            assert abs(float(client.x[:, col].mean())) < 1e-5
            assert abs(float(client.x[:, col].double().std(unbiased=False)) - 1) < 1e-5


def test_another_clients_rows_do_not_change_this_clients_features(tmp_path):
    """Pooled statistics would move alpha's encoding when beta's ages change; its own must not."""
    rows = hospitals()
    before = load(write_csv(tmp_path / "a.csv", rows))
    changed = [[r[0], r[1] * 1e6 + 7, r[2], r[3] - 50, r[4]] if r[0] == "beta" else r for r in rows]
    changed += [["beta", 1e9, "er", 0.0, "good"]] * 5
    after = load(write_csv(tmp_path / "b.csv", changed))
    assert torch.equal(before.train[0].x, after.train[0].x)  # alpha
    assert torch.equal(before.held_out[0].x, after.held_out[0].x)  # gamma
    assert not torch.equal(before.train[1].x, after.train[1].x[:30])  # beta: its own rows did change
    assert before.files != after.files


def test_categories_are_one_hot_over_the_tables_vocabulary(tmp_path):
    rows = hospitals()
    rows = [r if r[0] != "alpha" or r[2] != "icu" else [*r[:2], "er", *r[3:]] for r in rows]  # alpha has no icu
    data = load(write_csv(tmp_path / "h.csv", rows))
    ward = data.schema["columns"][1]
    assert ward == {"name": "ward", "kind": "categorical", "categories": WARDS}
    assert [c["kind"] for c in data.schema["columns"]] == ["numeric", "categorical", "numeric"]
    assert data.schema["labels"] == ["bad", "good"] and data.n_features == 5
    for client, name in zip(data.train + data.held_out, SCALES):
        mine = [r for r in rows if r[0] == name]
        onehot = client.x[:, 1:4]
        assert torch.equal(onehot.sum(1), torch.ones(len(mine)))
        assert [WARDS[int(i)] for i in onehot.argmax(1)] == [r[2] for r in mine]
        assert [data.schema["labels"][int(i)] for i in client.y] == [r[4] for r in mine]
    assert float(data.train[0].x[:, 3].sum()) == 0  # alpha: the icu column is there, and empty


def test_features_regression_drop_and_held_out_by_name(tmp_path):
    rows = hospitals()
    rows[3][3] = ""  # alpha's 4th row misses its dose
    path = write_csv(tmp_path / "h.csv", rows)
    data = load(path, features=["dose"], task="regression", missing="drop", held_out=["alpha"], label_column="age")
    assert data.kind == "regression" and data.n_outputs == 1 and data.x_shape == (1,)
    held = data.held_out[0]
    assert len(held.x) == 29 and held.y.shape == (29, 1) and held.y.dtype == torch.float32  # alpha, one row dropped
    assert [len(c.x) for c in data.train] == [30, 30]  # beta, gamma
    np.testing.assert_allclose(held.y[:, 0].numpy(), [r[1] for r in rows if r[0] == "alpha" and r[3] != ""], rtol=1e-6)


def test_held_out_by_name_overrides_the_last_in_sorted_order(tmp_path):
    path = write_csv(tmp_path / "h.csv", hospitals())
    by_count = load(path)
    by_name = load(path, held_out=["alpha"])
    assert torch.equal(by_count.held_out[0].x, by_name.train[1].x)  # gamma: held out by count, trains here
    assert torch.equal(by_count.train[0].x, by_name.held_out[0].x)  # alpha


def test_parquet_without_pyarrow_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    (tmp_path / "h.parquet").write_bytes(b"PAR1")
    with pytest.raises(ConfigError) as err:
        load(tmp_path / "h.parquet")
    assert err.value.field == "data.path" and "pip install pyarrow" in str(err.value)


def test_a_private_federated_run_on_a_table_through_the_cli(tmp_path, capsys):
    raw = raw_config(write_csv(tmp_path / "h.csv", hospitals()))
    raw["privacy"] = {"dp": "example", "example_sample_rate": 0.5, "noise_seed": 0, "secure_aggregation": "secagg+"}
    config = tmp_path / "table.toml"
    config.write_text(tomli_w.dumps(raw))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 0
    figures = json.loads((out / "personalization.json").read_text())
    assert {"loss_before", "loss_after", "acc_before", "acc_after"} <= set(figures)
    assert len(figures["loss_before"]) == 1  # the one held-out hospital
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "test" and "acc_after" in r for r in rows)
    written = load_config(out / "config.toml").data  # the schema the clients share, not their rows
    assert (written.clients, written.labels) == (["alpha", "beta", "gamma"], ["bad", "good"])
    assert [(c.name, c.kind, c.categories) for c in written.columns] == [
        ("age", "numeric", None), ("ward", "categorical", WARDS), ("dose", "numeric", None)]
    text = (out / "config.toml").read_text()
    assert not any(str(round(v, 3))[:6] in text for r in hospitals() for v in (r[1], r[3]))  # no value of a row


# -- refusals: one line naming the field, exit 2, no run folder -------------------------------

def _many_wards(rows):
    return [[*r[:2], f"w{i}", *r[3:]] for i, r in enumerate(rows * 3)]


# id -> (rows or raw bytes of the file, [data] changes, other changes, field, text in the line)
BAD = {
    "missing-file": (None, {"path": "nowhere.csv"}, {}, "data.path", "an existing CSV"),
    "not-utf8": (b"hospital,age\n\xff\xfe,1\n", {}, {}, "data.path", "UTF-8"),
    "ragged-row": (b"hospital,age,ward,dose,outcome\nalpha,1,er\n", {}, {}, "data.path", "line 2 has 3"),
    "not-a-table-suffix": (None, {"path": "h.xlsx"}, {}, "data.path", ".csv or .parquet"),
    "no-client-column": (hospitals(), {"client_column": "site"}, {}, "data.client_column", "'outcome'"),
    "no-label-column": (hospitals(), {"label_column": "y"}, {}, "data.label_column", "'hospital', 'age'"),
    "no-feature-column": (hospitals(), {"features": ["age", "weight"]}, {}, "data.features", "'dose'"),
    "small-client": ([r for r in hospitals() if r[0] != "beta"] + [r for r in hospitals() if r[0] == "beta"][:7],
                     {}, {}, "federated.partition.support_size", "client 'beta' holds 7 rows"),
    "one-class": ([[*r[:4], "good"] for r in hospitals()], {}, {}, "data.label_column", "at least two classes"),
    "too-many-categories": (_many_wards(hospitals()), {}, {}, "data.features", "one-hot"),
    "infinite-number": ([[*r[:3], "inf" if i == 4 else r[3], r[4]] for i, r in enumerate(hospitals())], {}, {},
                        "data.features", "line 6"),
    "text-target-for-regression": (hospitals(), {"task": "regression"}, {}, "data.label_column", "'bad'"),
    "missing-number": ([[*r[:3], "" if i == 10 else r[3], r[4]] for i, r in enumerate(hospitals())], {}, {},
                       "data.missing", "column 'dose' has no value at line 12"),
    "n-clients-mismatch": (hospitals(), {}, {"federated.n_clients": 3, "federated.clients_per_round": 3},
                           "federated.n_clients", "holds 3 clients"),
    "too-many-held-out": (hospitals(), {}, {"federated.held_out_clients": 3}, "federated.held_out_clients", "holds 3"),
    "unknown-held-out": (hospitals(), {"held_out": ["delta"]}, {}, "data.held_out", "'alpha', 'beta', 'gamma'"),
    # checked with the config, before the file is read
    "feature-is-the-label": (hospitals(), {"features": ["outcome"]}, {}, "data.features", "data.label_column"),
    "shards-on-a-table": (hospitals(), {}, {"federated.partition.scheme": "shards"}, "federated.partition.scheme", "natural"),
    "held-out-count-and-names": (hospitals(), {"held_out": ["alpha"]}, {"federated.held_out_clients": 2},
                                 "federated.held_out_clients", "data.held_out"),
    "no-label-column-set": (hospitals(), {"label_column": None}, {}, "data.label_column", "needs it"),
    "path-on-digits": (hospitals(), {"name": "digits", "client_column": None, "label_column": None}, {},
                       "data.path", "only table reads it"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_table_input_is_one_line_before_any_folder(tmp_path, capsys, case):
    content, data, other, field, text = BAD[case]
    path = tmp_path / "h.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        write_csv(path, content)
    raw = raw_config(path)
    raw["data"].update({k: str(tmp_path / v) if k == "path" else v for k, v in data.items()})
    raw["data"] = {k: v for k, v in raw["data"].items() if v is not None}
    for dotted, value in other.items():
        *sections, key = dotted.split(".")
        node = raw
        for s in sections:
            node = node.setdefault(s, {})
        node[key] = value
    config = tmp_path / "bad.toml"
    config.write_text(tomli_w.dumps(raw))
    out = tmp_path / "run"
    assert main(["run", str(config), "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"fedmeta: error: {field} = "), err
    assert text in err[0], err
    assert not out.exists()


def test_a_table_needs_a_federated_run(tmp_path):
    raw = raw_config(tmp_path / "h.csv")
    del raw["federated"]
    (tmp_path / "central.toml").write_text(tomli_w.dumps(raw))
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "central.toml")
    assert err.value.field == "data.name"


def test_a_resumed_table_run_reads_the_files_it_began_with(tmp_path, monkeypatch, capsys):
    path = write_csv(tmp_path / "h.csv", hospitals())
    config = tmp_path / "table.toml"
    config.write_text(tomli_w.dumps(raw_config(path)))
    from fedmeta.federated.runtime import Runtime

    original, calls = Runtime.run_round, []

    def cut_in_round_two(self):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return original(self)

    monkeypatch.setattr(Runtime, "run_round", cut_in_round_two)
    assert main(["run", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    monkeypatch.setattr(Runtime, "run_round", original)
    capsys.readouterr()
    kept = path.read_bytes()
    rows = hospitals()
    rows[0][3] += 1.0  # one dose of one patient
    write_csv(path, rows)
    assert main(["run", "--resume", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fedmeta: error: data.path") and "changed since" in err[-1], err
    path.write_bytes(kept)
    assert main(["run", "--resume", str(tmp_path / "run"), "--no-progress"]) == 0


def test_data_schema_prints_what_a_server_without_rows_runs_on(tmp_path, capsys):
    import tomllib

    path = write_csv(tmp_path / "h.csv", hospitals())
    config = tmp_path / "table.toml"
    config.write_text(tomli_w.dumps(raw_config(path)))
    assert main(["data", "schema", str(config)]) == 0
    printed = tomllib.loads(capsys.readouterr().out)["data"]
    assert printed["clients"] == sorted(SCALES) and printed["labels"] == ["bad", "good"]
    assert printed["columns"][1] == {"name": "ward", "kind": "categorical", "categories": WARDS}
    server = raw_config(path)
    server["data"] = {**{k: v for k, v in server["data"].items() if k != "path"}, **printed}
    a, b = make_federated(Config.model_validate(server), torch.Generator()), load(path)
    assert (a.kind, a.n_outputs, a.x_shape) == (b.kind, b.n_outputs, b.x_shape) and a.remote and not b.remote
    assert a.schema == b.schema  # the same schema the owners' files are read with
    assert main(["data", "schema", str(write_toml(tmp_path / "d.toml", {"run": {"name": "d"}}))]) == 2
    assert "data.name" in capsys.readouterr().err


def write_toml(path: Path, raw: dict) -> Path:
    path.write_text(tomli_w.dumps(raw))
    return path


def test_k_shot_per_class_episodes_hold_k_of_each_class(tmp_path):
    path = write_csv(tmp_path / "h.csv", hospitals(rows_each=40))
    raw = raw_config(path)
    raw["federated"]["partition"] = {"support_size": 2, "query_size": 3, "shots": "per_class"}
    data = make_federated(Config.model_validate(raw), torch.Generator().manual_seed(0))
    client = data.train[0]
    batch = client.sample(6, torch.Generator().manual_seed(1))
    assert batch.xs.shape[:2] == (6, 2 * 2) and batch.xq.shape[:2] == (6, 2 * 3)
    for t in range(6):
        assert torch.bincount(batch.ys[t], minlength=2).tolist() == [2, 2]
        assert torch.bincount(batch.yq[t], minlength=2).tolist() == [3, 3]
        rows = {tuple(r.tolist()) for r in torch.cat([batch.xs[t], batch.xq[t]])}
        assert len(rows) == 10 and rows <= {tuple(r.tolist()) for r in client.x}  # disjoint, the client's own
    assert fedmeta_run_ok(raw)


def fedmeta_run_ok(raw: dict) -> bool:
    import fedmeta

    result = fedmeta.run(raw, overrides={"federated.rounds": 1}, progress=False)
    return result.summary["rounds"] == 1


def test_k_shot_per_class_refuses_a_client_short_of_a_class(tmp_path):
    rows = [r for r in hospitals() if not (r[0] == "beta" and r[4] == "good")][:-1] + [
        r for r in hospitals() if r[0] == "beta" and r[4] == "good"][:3]
    raw = raw_config(write_csv(tmp_path / "h.csv", rows))
    raw["federated"]["partition"] = {"support_size": 2, "query_size": 3, "shots": "per_class"}
    with pytest.raises(ConfigError) as err:
        make_federated(Config.model_validate(raw), torch.Generator())
    assert err.value.field == "federated.partition.shots" and "'beta' holds 3 of class 'good'" in str(err.value)
    regression = raw_config(tmp_path / "h.csv", task="regression", label_column="dose")
    regression["data"]["features"] = ["age", "ward"]
    regression["federated"]["partition"] = {"shots": "per_class"}
    with pytest.raises(Exception, match="federated.partition.shots"):
        Config.model_validate(regression)
