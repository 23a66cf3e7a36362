"""A federated dataset given from Python (`fedmeta.run(..., data=...)`): the same clients as
the config's dataset give the same run, bit for bit; tensors become clients through
`from_tensors`; the parts are recorded in summary.json and the ledger; a dataset that
does not fit is refused in one line naming the argument."""

import json

import pytest
import torch
from api_helpers import same_params

import fedmeta
from fedmeta.config import Config
from fedmeta.data.federated import ExampleClient, from_tensors, make_federated
from fedmeta.errors import BadInput

DIGITS = {
    "run": {"name": "py-data", "seed": 2},
    "data": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [16]},
    "meta": {"algorithm": "fomaml", "inner_lr": 0.1, "eval_inner_steps": 2},
    "federated": {"rounds": 2, "n_clients": 4, "held_out_clients": 2, "clients_per_round": 3, "eval_every": 1,
                  "partition": {"support_size": 5, "query_size": 5},
                  "clients": {"procedure": "fedmeta", "local_steps": 2, "tasks_per_step": 2}},
    "ledger": {"enabled": True},
}


def config_clients():
    cfg = Config.model_validate(DIGITS)
    return make_federated(cfg, torch.Generator().manual_seed(cfg.run.seed))


def test_the_config_datasets_clients_from_python_give_the_same_run(tmp_path, monkeypatch):
    monkeypatch.setenv("FEDMETA_HOME", str(tmp_path / "home"))
    by_config = fedmeta.run(DIGITS, progress=False)
    clients = config_clients()
    by_object = fedmeta.run(DIGITS, data=clients, out=tmp_path / "run", progress=False)
    assert same_params(by_object.params, by_config.params)
    assert by_object.history == by_config.history
    assert by_object.summary["python"] == {"data": "fedmeta.data.federated.FederatedData"}
    # the same examples as tensors, through from_tensors
    pairs = lambda cs: [(c.x, c.y) for c in cs]  # noqa: E731
    tensors = from_tensors(pairs(clients.train), pairs(clients.held_out), support_size=5, query_size=5)
    assert (tensors.kind, tensors.n_outputs, tensors.x_shape) == (clients.kind, clients.n_outputs, clients.x_shape)
    assert same_params(fedmeta.run(DIGITS, data=tensors, progress=False).params, by_config.params)
    # the ledger's start entry names the part that came from Python
    import sqlite3

    with sqlite3.connect(tmp_path / "run" / "ledger.db") as db:
        start = json.loads(db.execute("SELECT body FROM entries ORDER BY idx LIMIT 1").fetchone()[0])
    assert start["extra"]["python"] == {"data": "fedmeta.data.federated.FederatedData"}


def test_regression_tensors_become_regression_clients():
    x = torch.randn(20, 3)
    data = from_tensors([(x, x[:, :1] * 2), (x, x[:, :1])], support_size=4, query_size=4)
    assert (data.kind, data.n_outputs, data.x_shape) == ("regression", 1, (3,))
    assert isinstance(data.train[0], ExampleClient) and data.held_out == []


def _broken_sampler():
    clients = config_clients()

    class Broken:
        n_examples = 1

        def sample(self, n_tasks, generator):
            raise RuntimeError("disk gone")

    return type(clients)([Broken(), *clients.train[1:]], clients.held_out, clients.kind, clients.n_outputs,
                         clients.x_shape)


@pytest.mark.parametrize("make, field", [
    (lambda: object(), "data"),
    (lambda: type(config_clients()), "data"),  # the class, not a dataset
    (lambda: _drop_one(config_clients()), "data.train"),  # 3 clients for federated.n_clients = 4
    (_broken_sampler, "data.train[0].sample"),
    (lambda: _reshaped(config_clients()), "data.x_shape"),
])
def test_a_dataset_that_does_not_fit_is_refused_before_anything_is_written(tmp_path, make, field):
    with pytest.raises(BadInput) as err:
        fedmeta.run(DIGITS, data=make(), out=tmp_path / "run", progress=False)
    assert err.value.field == field and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_a_central_run_refuses_a_federated_dataset():
    central = {k: v for k, v in DIGITS.items() if k not in ("federated", "ledger")}
    with pytest.raises(BadInput, match="^data = "):
        fedmeta.run(central, data=config_clients(), progress=False)


def _drop_one(clients):
    return type(clients)(clients.train[1:], clients.held_out, clients.kind, clients.n_outputs, clients.x_shape)


def _reshaped(clients):
    return type(clients)(clients.train, clients.held_out, clients.kind, clients.n_outputs, (8, 8))
