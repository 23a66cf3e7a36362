"""The server's side of a run: sampling, admission, the aggregation pipeline, the strategy
and the privacy accountant, with the state a checkpoint keeps.

The accountant is fed by the stage that adds the noise: client-level DP's server half
(`dp_fedavg.py`, through the aggregate it returns) or, under example-level DP, the
clients' DP-SGD (`Training.event`), whose parameters the server knows from the config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from fedmeta.config import Config
from fedmeta.errors import BadInput, ConfigError, shown
from fedmeta.federated.admission import Admission
from fedmeta.federated.aggregation import Aggregate, build_aggregation
from fedmeta.federated.dp_fedavg import ClientLevelDP
from fedmeta.federated.registry import build
from fedmeta.federated.robust import Aggregator
from fedmeta.federated.sampling import Sampler, expected_clients, generator
from fedmeta.federated.strategies import STRATEGIES, Strategy
from fedmeta.federated.transport import Broadcast
from fedmeta.params import Params
from fedmeta.privacy.accountant import Accountant, max_steps_for
from fedmeta.privacy.noise import rng_for

log = logging.getLogger("fedmeta.federated")


def check_strategy(strategy: Any, field: str = "strategy") -> None:
    """A server strategy given from Python: an object with `init` and `apply` (`strategies/base.py`)."""
    if strategy is None:
        return
    if isinstance(strategy, type) or not all(callable(getattr(strategy, m, None)) for m in ("init", "apply")):
        why = " (a class: pass an instance)" if isinstance(strategy, type) else ""
        raise BadInput(field, shown(strategy),
                       f"an object with init(params) -> state and apply(params, delta, state) -> (params, state){why}")


class Server:
    def __init__(self, cfg: Config, params: Params, n_clients: int, client_event: Callable[[], dict[str, Any] | None],
                 strategy: Strategy | None = None, robust: Aggregator | None = None):
        """`strategy` and `robust` replace the configured strategy and robust rule (checked
        here: an `(init, apply)` object; a callable usable where the updates are in the clear)."""
        check_strategy(strategy)
        fed, dp = cfg.federated, cfg.privacy
        self.seed, self.noise_seed, self.privacy = cfg.run.seed, dp.noise_seed, dp
        self.sampler = Sampler(n_clients, cfg.clients_per_round_count, poisson=dp.dp in ("central", "local"))
        rate, m = expected_clients(cfg.clients_per_round_count, n_clients)
        self.client_dp = ClientLevelDP.from_config(cfg, rate, m) if dp.dp in ("central", "local") else None
        self.aggregation = build_aggregation(cfg, self.client_dp, robust)
        server = cfg.federated.server
        self.strategy = build(STRATEGIES, server.strategy, server) if strategy is None else strategy
        self.params, self.state, self.round = params, self.strategy.init(params), 0
        self.admission = Admission()
        self.accountant = Accountant(dp.accountant)
        self.client_event = client_event
        secure = dp.secure_aggregation != "off"  # a secure sum of one update would reveal it (SecAgg needs two)
        self.min_usable = max(fed.min_clients, 2) if secure else fed.min_clients
        self.affordable_rounds = self._affordable_rounds()

    # -- a round ----------------------------------------------------------------------------
    def generator(self, round_: int, attempt: int = 0, stream: int = 0):
        return generator(self.seed, round_, attempt, stream)

    @property
    def clip_norm(self) -> float:
        """Client-level DP's C this round (the config's C under example-level DP)."""
        return self.client_dp.clip_norm if self.client_dp is not None else self.privacy.clip_norm

    def broadcast(self, round_: int, attempt: int, run_id: str = "") -> tuple[list[int], Broadcast]:
        """The round's sample and what is sent to it (the round stream continues after sampling)."""
        gen = self.generator(round_, attempt)
        sampled = self.sampler.sample(gen)
        return sampled, Broadcast(self.params, self.clip_norm, run_id, gen, self.aggregation,
                                  lambda c, data, signed: self.admission.check_signature(round_, attempt, c, data, signed))

    def noise_rng(self, round_: int) -> np.random.Generator:
        return rng_for(self.noise_seed, round_, 0)

    def aggregate(self, admitted: Any, round_: int) -> Aggregate:
        """Δ from the admitted updates (or from the sum the clients' masking computed)."""
        rng = self.noise_rng(round_)
        if admitted.summed is not None:
            out = self.aggregation.finish_sum(admitted.summed.total, admitted.summed.weight, rng)
        else:
            ids = sorted(admitted.updates)
            out = self.aggregation(admitted.updates.rows(ids), [admitted.weights[c] for c in ids],
                                   [admitted.reports.get(c, 0.0) for c in ids], rng)
        if out.event is None:
            out.event = self.client_event()
        return out

    def apply(self, aggregate: Aggregate) -> None:
        """The strategy's step with Δ, and the accountant's with the noise's DP event."""
        delta = {k: v.to(self.params[k].dtype) for k, v in aggregate.delta.items()}
        self.params, self.state = self.strategy.apply(self.params, delta, self.state)
        self.round += 1
        if aggregate.event is not None:
            self.accountant.step(**aggregate.event)

    # -- privacy budget -----------------------------------------------------------------------
    def next_event(self) -> dict[str, Any] | None:
        """What the next round will cost (None: no noise, nothing to count)."""
        return self.client_dp.event() if self.client_dp is not None else self.client_event()

    def privacy_spent(self) -> dict[str, Any]:
        dp = self.privacy
        if dp.dp == "off":
            return {}
        unit = {"dp_unit": "example" if dp.dp == "example" else "client"}
        if dp.noise_multiplier == 0:  # clipping only: no finite ε
            return {"epsilon": None, "delta": dp.delta, "accountant": dp.accountant, **unit}
        eps = self.accountant.epsilon(dp.delta) if self.accountant.history else 0.0
        return {"epsilon": eps, "delta": dp.delta, "accountant": dp.accountant, **unit}

    def budget_exhausted(self) -> str | None:
        """Why the next round must not run (it would spend more than the target ε), or None."""
        dp, event = self.privacy, self.next_event()
        if dp.target_epsilon is None or event is None:
            return None
        if self.accountant.would_exceed(target_epsilon=dp.target_epsilon, delta=dp.delta, **event):
            spent = self.privacy_spent()["epsilon"]
            return (f"privacy budget: round {self.round + 1} would exceed target ε = {dp.target_epsilon} at "
                    f"δ = {dp.delta} (σ = {event['noise_multiplier']:.4g}, q = {event['sample_rate']:.4g}, "
                    f"{event['steps']} step(s) per round); spent ε = {spent:.4g}")
        return None

    def _affordable_rounds(self) -> int | None:
        """Rounds the target ε allows (None: no target); a target below one round's ε is a
        config error, before anything runs."""
        dp, event = self.privacy, self.next_event()
        if dp.target_epsilon is None or event is None:
            return None
        try:
            steps = max_steps_for(target_epsilon=dp.target_epsilon, delta=dp.delta, noise_multiplier=event["noise_multiplier"],
                                  sample_rate=event["sample_rate"], accountant=dp.accountant)
            if steps < event["steps"]:
                raise BadInput("privacy.target_epsilon", dp.target_epsilon,
                               f"room for {steps} of the {event['steps']} DP-SGD steps of one round")
            return steps // event["steps"]
        except BadInput as err:
            raise ConfigError("privacy.target_epsilon", dp.target_epsilon,
                              f"{err.accepted}: no round fits; raise privacy.noise_multiplier or lower "
                              "federated.clients_per_round") from None

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        clip_state = self.client_dp.clip_state if self.client_dp is not None else None
        return {"round": self.round, "params": self.params, "server_state": self.state,
                "accountant": self.accountant.state_dict(), "aggregation": {"clip_state": clip_state}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.round, self.params, self.state = state["round"], state["params"], state["server_state"]
        self.accountant = Accountant.from_state_dict(state["accountant"])
        if self.client_dp is not None:
            self.client_dp.clip_state = state["aggregation"]["clip_state"]
