"""A strategy and a client step defined here, outside fedmeta, run in-process and over the
Flower transport (ServerApp side in this process, ClientApp handlers on a loopback grid):
the strategy replaces the configured one, the step runs on every client between the DP
step and compression, and its state is kept per client across rounds."""

from dataclasses import dataclass, replace

import torch

from fedmeta.deploy.clientapp import ClientHandlers
from fedmeta.deploy.messages import STEP_STATE
from fedmeta.deploy.transport import FlowerTransport
from fedmeta.federated.runtime import Runtime


@dataclass
class HalfStep:
    """θ + ½·Δ̄: FedAvg with server learning rate ½, written as a user would."""

    calls: int = 0

    def init(self, params):
        return {}

    def apply(self, params, delta, state):
        self.calls += 1
        return {k: params[k] + 0.5 * delta[k] for k in params}, state


class Doubling:
    """Sends 2·Δ and counts, per client, the rounds it took part in (its state)."""

    def init(self, params):
        return {"rounds": torch.zeros(())}

    def apply(self, upload, state, ctx):
        return replace(upload, delta={k: 2 * v for k, v in upload.delta.items()}), {"rounds": state["rounds"] + 1}


def params_after(runtime, rounds=2):
    for _ in range(rounds):
        runtime.run_round()
    return runtime.params


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_strategy_from_outside_replaces_the_configured_one(config):
    strategy = HalfStep()
    mine = params_after(Runtime(config(), strategy=strategy))
    assert strategy.calls == 2 and same(mine, params_after(Runtime(config(server_lr=0.5))))


def test_a_client_step_from_outside_runs_on_every_client_with_its_own_state(config):
    runtime = Runtime(config(clients_per_round=3), client_steps={"double": Doubling()})
    mine = params_after(runtime)
    assert same(mine, params_after(Runtime(config(clients_per_round=3, server_lr=2.0))))  # mean of 2Δ = 2·mean(Δ), exactly
    assert list(runtime.transport.pipeline.steps) == ["double", "compress", "sign"]
    assert {c: int(s["double"]["rounds"]) for c, s in runtime.transport.states.items()} == {0: 2, 1: 2, 2: 2}


def test_both_run_over_the_flower_transport(config, deployed, grid_factory):
    """Doubling on the clients and HalfStep on the server cancel out exactly: the deployed
    run with both ends where the deployed run with neither does."""
    cfg = config(clients_per_round=3)
    plain = params_after(deployed(cfg, grid_factory(3), min_nodes=3))
    grid, strategy = grid_factory(3, client=ClientHandlers({"double": Doubling()})), HalfStep()
    runtime = Runtime(cfg, lambda _: FlowerTransport(cfg, grid, min_nodes=3), strategy=strategy)
    assert same(params_after(runtime), plain) and strategy.calls == 2
    for ctx in grid.contexts.values():  # each supernode kept its step's state between rounds
        assert int(ctx.state[STEP_STATE + "double"].to_torch_state_dict()["rounds"]) == 2
