"""The clients' local procedure from Python (`procedure=`): a re-implementation of FedAvg's
local SGD gives the configured `sgd` run bit for bit, in-process and on Flower supernodes
(each ClientApp given the same procedure); a procedure that does not fit is refused in one
line naming the argument, before anything is written."""

from dataclasses import dataclass

import pytest
import torch
from torch.func import functional_call, grad

import fedmeta
from fedmeta.config import Config
from fedmeta.deploy.clientapp import ClientHandlers
from fedmeta.deploy.transport import FlowerTransport
from fedmeta.errors import BadInput
from fedmeta.federated.runtime import Runtime

CONFIG = {
    "run": {"name": "procedure", "seed": 4},
    "data": {"name": "digits"},
    "model": {"name": "mlp", "hidden": [16]},
    "meta": {"eval_inner_steps": 2, "inner_lr": 0.1},
    "federated": {"rounds": 2, "n_clients": 4, "held_out_clients": 2, "clients_per_round": 3, "eval_every": 1,
                  "partition": {"support_size": 5, "query_size": 5},
                  "clients": {"procedure": "sgd", "local_steps": 2, "tasks_per_step": 2, "lr": 0.05}},
}


@dataclass
class PlainSGD:
    """FedAvg's local step written here: θ − lr·∇ cross-entropy on the support and query examples."""

    model: torch.nn.Module
    lr: float = 0.05

    def step(self, params, anchor, episodes):
        x = torch.cat([episodes.xs.flatten(0, 1), episodes.xq.flatten(0, 1)])
        y = torch.cat([episodes.ys.flatten(0, 1), episodes.yq.flatten(0, 1)])
        g = grad(lambda p: torch.nn.functional.cross_entropy(functional_call(self.model, p, (x,)), y))(params)
        return {k: p - self.lr * g[k] for k, p in params.items()}


def plain_sgd(model, kind):
    """A procedure factory: (model, kind) -> an object with step."""
    return PlainSGD(model)


def same_params(a, b) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


class Frozen:
    """Sends Δ = 0."""

    def step(self, params, anchor, episodes):
        return params


def test_a_procedure_from_python_equals_the_configured_one():
    configured = fedmeta.run(CONFIG, progress=False)
    mine = fedmeta.run(CONFIG, procedure=plain_sgd, progress=False)
    assert same_params(mine.params, configured.params)
    assert mine.summary["python"] == {"procedure": f"{__name__}.plain_sgd"}
    frozen = fedmeta.run(CONFIG, procedure=Frozen(), progress=False)  # the object form
    start = Runtime(Config.model_validate(CONFIG)).params
    assert same_params(frozen.params, start)  # nobody moved the model


def test_supernodes_given_the_procedure_equal_the_in_process_run(grid_factory):
    cfg = Config.model_validate(CONFIG)
    local = Runtime(cfg, procedure=plain_sgd)
    grid = grid_factory(4, client=ClientHandlers(procedure=plain_sgd))
    deployed = Runtime(cfg, lambda rt: FlowerTransport(rt.cfg, grid, min_nodes=4, wait=1), procedure=plain_sgd)
    for _ in range(2):
        local.run_round()
        deployed.run_round()
    assert same_params(deployed.params, local.params)  # each client's episodes come from its own stream


@pytest.mark.parametrize("procedure, text", [
    (object(), "an object with step(params, anchor, episodes)"),
    (PlainSGD, "an object with step"),  # the class, not an instance or factory
    (lambda model, kind: 3, "(it built a int)"),
    (lambda model, kind: 1 / 0, "ZeroDivisionError"),
])
def test_a_procedure_that_does_not_fit_is_one_line(tmp_path, procedure, text):
    with pytest.raises(BadInput) as err:
        fedmeta.run(CONFIG, procedure=procedure, out=tmp_path / "run", progress=False)
    assert err.value.field == "procedure" and text in str(err.value) and len(str(err.value).splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_example_level_dp_keeps_its_own_procedures():
    private = {**CONFIG, "privacy": {"dp": "example", "example_sample_rate": 0.5, "noise_seed": 0}}
    with pytest.raises(BadInput, match="^procedure = .*privacy.dp = 'example'"):
        fedmeta.run(private, procedure=plain_sgd, progress=False)


def test_a_procedure_named_by_config_equals_the_one_from_python(tmp_path):
    by_config = {**CONFIG, "federated": {**CONFIG["federated"], "clients": {
        **CONFIG["federated"]["clients"], "procedure": f"{__name__}:plain_sgd"}}}
    from_config = fedmeta.run(by_config, progress=False)
    assert same_params(from_config.params, fedmeta.run(CONFIG, procedure=plain_sgd, progress=False).params)
    assert "python" not in from_config.summary  # the config names it: config.toml rebuilds the run
    bad = {**by_config, "federated": {**by_config["federated"], "clients": {
        **by_config["federated"]["clients"], "procedure": f"{__name__}:NOT_THERE"}}}
    with pytest.raises(BadInput, match=r"^federated.clients.procedure = .*has no attribute NOT_THERE"):
        fedmeta.run(bad, out=tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()
