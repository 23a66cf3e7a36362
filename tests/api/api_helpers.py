"""Helpers of the Python API's tests: a tiny federated sinusoid config (a run of a few
seconds), folder listings, bit-for-bit parameter comparison."""

import copy


def tiny(rounds: int = 2, **sections) -> dict:
    """A small federated config as a dict laid out as the TOML; `sections` replace whole sections."""
    raw = {
        "run": {"name": "api-tiny", "seed": 0},
        "data": {"name": "sinusoid", "k_shot": 5, "k_query": 5},
        "model": {"name": "mlp", "hidden": [16, 16]},
        "meta": {"inner_lr": 0.01, "eval_inner_steps": 2},
        "federated": {"rounds": rounds, "n_clients": 8, "held_out_clients": 4, "clients_per_round": 4,
                      "eval_every": 1, "clients": {"local_steps": 2, "tasks_per_step": 2, "lr": 0.01}},
    }
    raw.update(copy.deepcopy(sections))
    return raw


def listing(folder) -> list[str]:
    """Every path under `folder`, relative, sorted."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def same_params(a: dict, b: dict) -> bool:
    """Bit for bit: the same names, dtypes, shapes and values."""
    import torch

    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
