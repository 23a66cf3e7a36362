"""The server-strategy interface: a pure (init, apply) pair over parameter dicts.

`apply` receives the aggregated client update Δ (the weighted mean of θ_local − θ) and
returns the next global parameters; the state holds server-optimizer moments as plain
tensors so it checkpoints. Cross-cutting features (DP, secure aggregation) wrap the
aggregation step, not the strategy.
"""

from __future__ import annotations

from typing import Any, Protocol

from fedmeta.params import Params

State = dict[str, Any]


class Strategy(Protocol):
    def init(self, params: Params) -> State: ...

    def apply(self, params: Params, delta: Params, state: State) -> tuple[Params, State]: ...
