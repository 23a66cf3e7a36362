import pytest

from fedmeta.config import Config, sectioned


def make_config(data: str = "sinusoid", **federated) -> Config:
    """A small federated config; keyword arguments override [federated] keys, given by their
    flat names (local_lr, aggregator, ...: `fedmeta.config.DEPRECATED`) or as section tables."""
    fed = dict(rounds=3, n_clients=8, held_out_clients=4, clients_per_round=4, local_steps=2,
               tasks_per_step=2, local_lr=0.01, eval_every=1)
    fed.update(federated)
    meta = fed.pop("meta", {})
    raw = {
        "run": {"seed": 0},
        "data": {"name": data, "k_shot": 5, "k_query": 5},
        "model": {"name": "mlp", "hidden": [16, 16]},
        "meta": {"inner_lr": 0.01, "eval_inner_steps": 2, **meta},
        "federated": sectioned(fed),
    }
    return Config.model_validate(raw)


@pytest.fixture
def config():
    return make_config
