"""The server's aggregation pipeline, built in one place from config (`build_aggregation`)
and nested as TFF's aggregators are: from the admitted updates to the one Δ the strategy
applies, with the DP event of any noise it added.

- client-level DP: `DPMean(dp, inner)`, where `inner` sums the clipped updates in the
  clear, by secure aggregation or as CKKS ciphertexts (`dp_fedavg.py` adds the noise);
- secure sums without DP: `SecureMean(inner)`, the example-weighted mean from Σ w·Δ, Σ w;
- otherwise `RobustMean(rule)`: the weighted mean, or a Byzantine-robust rule (`robust/`),
  on every update in the clear.

The inner sums: `SecAggSum` (Bonawitz et al. 2017; SecAgg+ of Bell et al. 2020, the
protocol's state machines run in-process, `secure.py`) and `CKKSSum` (keys dealt once per
run, a keyless server adds ciphertexts, `encrypted.py`). Deployed, the clients mask their
own rows and the transport hands over the unmasked sum (`finish_sum`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedmeta.config import Config
from fedmeta.errors import BadInput, shown
from fedmeta.federated.dp_fedavg import UNCLIPPED, ClientLevelDP
from fedmeta.federated.encrypted import HEStats, KeySetup, distribute_keys, encrypted_weighted_sum
from fedmeta.federated.registry import build
from fedmeta.federated.robust import ROBUST, Aggregator, Mean
from fedmeta.federated.secure import secure_weighted_sum, weight_scale
from fedmeta.params import Params, clip, weighted_sum


@dataclass
class Aggregate:
    """One round's aggregate: Δ for the strategy, the DP event of the noise added (None:
    none), and what the sum cost (bytes, seconds) for the metrics."""

    delta: Params
    event: dict[str, Any] | None = None
    costs: dict[str, Any] = field(default_factory=dict)


class Sum(Protocol):
    def __call__(self, rows: list[Params], weights: list[float], clip: float) -> tuple[Params, float, dict[str, Any]]: ...


@dataclass
class SecAggSum:
    """(Σ w·row, Σ w) by secure aggregation; coordinates clipped to ±clip in fixed point."""

    neighbourhood: str  # "secagg" (complete graph) or "secagg+"

    def __call__(self, rows: list[Params], weights: list[float], clip: float) -> tuple[Params, float, dict[str, Any]]:
        total, weight, stats = secure_weighted_sum(rows, weights, clip=clip, neighbourhood=self.neighbourhood)
        return total, weight, {
            "secagg_bytes_up": sum(c.total_bytes_sent for c in stats.clients.values()),
            "secagg_client_seconds": round(stats.client_seconds_per_client(), 4),
            "secagg_server_seconds": round(stats.server.total_seconds, 4),
            "secagg_included": len(stats.included),
        }


@dataclass
class CKKSSum:
    """(Σ w·row, Σ w) as CKKS ciphertexts the server adds without a key. The clients' keys
    are dealt at the first sum in-process; deployed, the clients deal them (`deploy/ckks.py`)
    and this is never called."""

    keys: KeySetup | None = None

    def __call__(self, rows: list[Params], weights: list[float], clip: float) -> tuple[Params, float, dict[str, Any]]:
        if self.keys is None:
            self.keys = distribute_keys()
        total, weight, stats = encrypted_weighted_sum(rows, weights, self.keys.clients)
        return total, weight, he_costs(stats)


def he_costs(stats: HEStats) -> dict[str, Any]:
    return {
        "he_bytes_up": sum(stats.client_bytes),
        "he_client_seconds": round(stats.client_seconds_per_client(), 4),
        "he_server_seconds": round(stats.server_seconds, 4),
        "he_decrypt_seconds": round(stats.decrypt_seconds, 4),
        "he_max_abs_error": stats.max_abs_error,
    }


@dataclass
class RobustMean:
    """The weighted mean, or the robust rule that replaces it, on updates in the clear."""

    rule: Aggregator
    secure = False

    def __call__(self, updates: Sequence[Params], weights: list[float], reports: list[float],
                 rng: np.random.Generator) -> Aggregate:
        """The mean reads `Stacked` updates whole; any other rule gets them as a list."""
        return Aggregate(self.rule(updates if isinstance(self.rule, Mean) else list(updates), weights))


@dataclass
class SecureMean:
    """The example-weighted mean from a secure sum: weights scaled into (0, 1] for the
    fixed-point range, then Σ w·Δ / Σ w."""

    inner: Sum
    secagg_clip: float
    secure = True

    def weights(self, weights: list[float]) -> list[float]:
        scale = weight_scale(weights)
        return [w / scale for w in weights]

    def clip(self) -> float:
        return self.secagg_clip

    def row(self, update: Params, report: float) -> Params:
        return update

    def __call__(self, updates: Sequence[Params], weights: list[float], reports: list[float],
                 rng: np.random.Generator) -> Aggregate:
        total, weight, costs = self.inner(updates, self.weights(weights), self.clip())
        return Aggregate(self.finish_sum(total, weight, rng).delta, None, costs)

    def finish_sum(self, total: Params, weight: float, rng: np.random.Generator) -> Aggregate:
        return Aggregate({k: v / weight for k, v in total.items()})


@dataclass
class DPMean:
    """DP-FedAvg's server half on the clipped updates' sum: in the clear (`inner` None:
    unit weights, each update clipped again to C under central noise; under local noise
    each arrives noised, and clipping it again would remove noise the accountant counts) or
    by a secure sum with unit weights."""

    dp: ClientLevelDP
    inner: Sum | None = None

    @property
    def secure(self) -> bool:
        return self.inner is not None

    def weights(self, weights: list[float]) -> list[float]:
        return [1.0] * len(weights)

    def clip(self) -> float:
        return self.dp.secure_clip()

    def row(self, update: Params, report: float) -> Params:
        return self.dp.row(update, report)

    def __call__(self, updates: Sequence[Params], weights: list[float], reports: list[float],
                 rng: np.random.Generator) -> Aggregate:
        if self.inner is None:
            local = self.dp.placement == "local"  # each update noised already (see the docstring)
            total = weighted_sum(updates if local else [clip(u, self.dp.clip_norm) for u in updates])
            return Aggregate(self.dp.finish(total, sum(reports), rng), self.dp.event())
        rows = [self.row(u, b) for u, b in zip(updates, reports, strict=True)]
        total, weight, costs = self.inner(rows, self.weights(weights), self.clip())
        return Aggregate(self.finish_sum(total, weight, rng).delta, self.dp.event(), costs)

    def finish_sum(self, total: Params, weight: float, rng: np.random.Generator) -> Aggregate:
        total = dict(total)
        count = float(total.pop(UNCLIPPED, 0.0))
        return Aggregate(self.dp.finish(total, count, rng), self.dp.event())


def build_aggregation(cfg: Config, client_dp: ClientLevelDP | None,
                      robust: Aggregator | None = None) -> RobustMean | SecureMean | DPMean:
    """The aggregation pipeline `cfg` asks for (see the module docstring); `robust` (a
    callable `(updates, weights) -> update`, e.g. from Python) replaces the configured
    rule, and is refused, as a configured robust rule is, where updates are not in the clear."""
    if robust is not None:
        check_robust(cfg, robust)
    kind = cfg.privacy.secure_aggregation
    inner: Sum | None = None
    if kind == "ckks":
        inner = CKKSSum()
    elif kind != "off":
        inner = SecAggSum(kind)
    if client_dp is not None:
        return DPMean(client_dp, inner)
    if inner is not None:
        return SecureMean(inner, cfg.privacy.secagg_clip)
    if robust is not None:
        return RobustMean(robust)
    section = cfg.federated.robust
    return RobustMean(build(ROBUST, section.rule, section))


def check_robust(cfg: Config, robust: Any, field: str = "robust") -> None:
    """A robust rule given from Python: a callable (not a class) `(updates, weights) ->
    update`, under the config rules' conditions (every update in the clear)."""
    name = shown(robust)
    if isinstance(robust, type) or not callable(robust):
        why = " (a class: pass an instance)" if isinstance(robust, type) else ""
        raise BadInput(field, name, f"a callable (updates, weights) -> update (robust/base.py `Aggregator`){why}")
    dp = cfg.privacy
    if dp.secure_aggregation != "off":
        raise BadInput(field, name, f"no robust rule with privacy.secure_aggregation = '{dp.secure_aggregation}': "
                                    "a robust rule needs each update in the clear, the server only sees the masked sum")
    if dp.dp in ("central", "local"):
        raise BadInput(field, name, f"no robust rule with privacy.dp = '{dp.dp}': client-level ε is accounted for "
                                    "the noised mean (use privacy.dp = 'example' or 'off')")
