"""Index columns (`data.index_columns`): an item's id read as its place in the shared
vocabulary, with no limit on distinct values, and embedded by the MLP
(`models.EmbeddingMLP`) — checked against a lookup and a forward pass written out."""

from __future__ import annotations

import csv
import random

import pytest
import torch
import torch.nn.functional as F

from fedmeta.config import Config, load_config
from fedmeta.data.federated import make_federated
from fedmeta.data.table import embedded_columns
from fedmeta.errors import ConfigError
from fedmeta.federated.runtime import Runtime
from fedmeta.models import EmbeddingMLP

ITEMS = [f"item{i:03d}" for i in range(300)]  # more than a categorical column may hold


def ratings(path, seed: int = 0):
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["user", "item", "genre", "year", "rating"])
        for u in range(4):
            for _ in range(40):
                item = rng.choice(ITEMS)
                w.writerow([f"u{u}", item, rng.choice(["drama", "comedy"]), rng.randint(1950, 2016), rng.random() * 5])
    return path


def config(path, **extra) -> Config:
    raw = {"data": {"name": "table", "path": str(path), "client_column": "user", "label_column": "rating",
                    "task": "regression", "index_columns": ["item"]},
           "model": {"name": "mlp", "hidden": [8], "embedding_dim": 3},
           "federated": {"rounds": 1, "n_clients": 3, "held_out_clients": 1, "clients_per_round": 2,
                         "partition": {"support_size": 5, "query_size": 5}}}
    for key, value in extra.items():
        section, name = key.split("__")
        raw[section][name] = value
    return Config.model_validate(raw)


def test_an_index_column_is_the_items_place_in_the_vocabulary(tmp_path):
    path = ratings(tmp_path / "r.csv")
    data = make_federated(config(path), torch.Generator().manual_seed(0))
    (item,) = [c for c in data.schema["columns"] if c["kind"] == "index"]
    rows = list(csv.DictReader(open(path)))
    assert item["categories"] == sorted({r["item"] for r in rows})  # the shared vocabulary
    first = [r["item"] for r in rows if r["user"] == "u0"]
    widths = {"numeric": lambda c: 1, "index": lambda c: 1, "categorical": lambda c: len(c["categories"])}
    before = [c for c in data.schema["columns"][: [c["name"] for c in data.schema["columns"]].index("item")]]
    column = sum(widths[c["kind"]](c) for c in before)  # the item's place in an encoded row
    assert embedded_columns(data) == [(column, len(item["categories"]))]
    assert data.train[0].x[:, column].long().tolist() == [item["categories"].index(v) for v in first]
    assert data.x_shape == (sum(widths[c["kind"]](c) for c in data.schema["columns"]),)


def test_the_embedding_mlp_is_a_lookup_then_the_mlp(tmp_path):
    torch.manual_seed(0)
    net = EmbeddingMLP(4, 1, (6,), [(1, 10)], dim=3)
    x = torch.tensor([[0.5, 7.0, -1.0, 2.0], [1.5, 2.0, 0.0, -2.0]])
    rest = x[:, [0, 2, 3]]
    emb = net.embed[0].weight[x[:, 1].long()]
    hidden = F.relu(F.linear(torch.cat([rest, emb], 1), net.mlp.body[0].weight, net.mlp.body[0].bias))
    expected = F.linear(hidden, net.head.weight, net.head.bias)
    torch.testing.assert_close(net(x), expected)


def test_a_run_trains_the_embedding(tmp_path):
    cfg = config(ratings(tmp_path / "r.csv"))
    runtime = Runtime(cfg)
    assert isinstance(runtime.clients.model, EmbeddingMLP)
    before = runtime.params["embed.0.weight"].clone()
    runtime.run_round()
    assert not torch.equal(before, runtime.params["embed.0.weight"])


@pytest.mark.parametrize("extra,field", [
    ({"data__index_columns": ["rating"]}, "data.index_columns"),
    ({"data__index_columns": ["item", "item"]}, "data.index_columns"),
    ({"data__index_columns": None}, "model.embedding_dim"),
])
def test_bad_index_settings_are_refused_naming_the_field(tmp_path, extra, field):
    import tomli_w

    raw = config(ratings(tmp_path / "r.csv")).model_dump(exclude_none=True)
    for key, value in extra.items():
        section, name = key.split("__")
        if value is None:
            raw[section].pop(name)
        else:
            raw[section][name] = value
    path = tmp_path / "c.toml"
    path.write_text(tomli_w.dumps(raw))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert err.value.field == field
