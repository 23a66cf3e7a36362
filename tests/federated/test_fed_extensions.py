"""A strategy and a client step defined here, outside fedmeta, run in the in-process
runtime: the strategy replaces the configured one, the step runs on every client between
the DP step and compression, and its state is kept per client across rounds."""

from dataclasses import dataclass, replace

import torch

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


def test_a_strategy_from_outside_replaces_the_configured_one(config):
    strategy = HalfStep()
    mine = params_after(Runtime(config("sinusoid"), strategy=strategy))
    reference = params_after(Runtime(config("sinusoid", server_lr=0.5)))
    assert strategy.calls == 2 and all(torch.equal(mine[k], reference[k]) for k in mine)


def test_a_client_step_from_outside_runs_on_every_client_with_its_own_state(config):
    runtime = Runtime(config("sinusoid"), client_steps={"double": Doubling()})
    mine = params_after(runtime)
    reference = params_after(Runtime(config("sinusoid", server_lr=2.0)))  # the mean of 2Δ is 2·mean(Δ), exactly
    assert all(torch.equal(mine[k], reference[k]) for k in mine)
    assert list(runtime.transport.pipeline.steps) == ["double", "compress", "sign"]
    counts = {c: int(s["double"]["rounds"]) for c, s in runtime.transport.states.items()}
    assert sum(counts.values()) == 2 * 4 and set(counts.values()) <= {1, 2}  # 4 clients a round
