"""Adaptive clipping in the runtime (Andrew et al. 2021): the clip follows the geometric rule
from the clients' unclipped count, settles at the target quantile of the update norms, runs
the same through secure aggregation, and its noise split matches §3.1."""

import math

import numpy as np
import pytest
import torch

from fedmeta.config import Config, load_config
from fedmeta.errors import ConfigError
from fedmeta.federated.aggregation import build_aggregation
from fedmeta.federated.dp_fedavg import ClientLevelDP
from fedmeta.federated.runtime import Runtime
from fedmeta.federated.sampling import expected_clients
from fedmeta.privacy.noise import rng_for


def adaptive(config, **privacy) -> Config:
    cfg = config("sinusoid", rounds=3, n_clients=12, clients_per_round=6, held_out_clients=2, local_lr=0.005)
    settings = {"dp": "central", "clipping": "adaptive", "noise_multiplier": 0.0, "clip_norm": 0.05, **privacy}
    return cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update=settings)})


def client_dp(cfg: Config, m: float) -> ClientLevelDP:
    """Client-level DP with m expected clients per round (the sampling rate is the config's;
    it only enters the accountant's event)."""
    rate, _ = expected_clients(cfg.clients_per_round_count, cfg.federated.n_clients)
    return ClientLevelDP.from_config(cfg, rate, m)


def norm_update(norm: float, dim: int = 8) -> dict[str, torch.Tensor]:
    v = torch.ones(dim, dtype=torch.float64)
    return {"w": v / v.norm() * norm}


def test_clip_follows_the_geometric_rule(config):
    cfg = adaptive(config, target_quantile=0.3, clip_learning_rate=0.4, clip_norm=2.0)
    dp = client_dp(cfg, 4)
    agg = build_aggregation(cfg, dp)
    norms = [0.5, 1.5, 3.0, 5.0]
    rng = np.random.default_rng(0)
    reports = [dp.privatize(norm_update(n), dp.clip_norm, rng)[1] for n in norms]
    assert reports == [1.0, 1.0, 0.0, 0.0]
    agg([norm_update(min(n, 2.0)) for n in norms], [1.0] * 4, reports, rng)
    assert dp.clip_norm == pytest.approx(2.0 * math.exp(-0.4 * (2 / 4 - 0.3)))


def test_clip_settles_at_the_target_quantile(config):
    """Fed the same norms every round, C converges to their γ-quantile (numpy's)."""
    dp = client_dp(adaptive(config, target_quantile=0.7, clip_learning_rate=0.05, clip_norm=0.1), 100)
    norms = np.random.default_rng(1).uniform(1.0, 10.0, 100)
    rng = np.random.default_rng(2)
    for _ in range(400):
        reports = [dp.privatize(norm_update(n), dp.clip_norm, rng)[1] for n in norms]
        dp.finish(norm_update(0.0), sum(reports), rng)  # the server half: no noise (z = 0), C's step
    inside = np.mean(norms <= dp.clip_norm)
    assert inside == pytest.approx(0.7, abs=0.03)
    assert dp.clip_norm == pytest.approx(np.quantile(norms, 0.7), rel=0.05)


@pytest.mark.parametrize("protocol", ["secagg+", "ckks"])
def test_adaptive_clipping_through_secure_aggregation_equals_the_clear(config, protocol):
    plain = Runtime(adaptive(config))
    secure = Runtime(adaptive(config, secure_aggregation=protocol))
    clips = []
    for _ in range(3):
        plain.run_round()
        secure.run_round()
        clips.append(plain.server.clip_norm)
        assert secure.server.clip_norm == pytest.approx(plain.server.clip_norm, rel=1e-9)
    assert len(set(clips)) == 3  # the clip really moved
    for k in plain.params:
        torch.testing.assert_close(secure.params[k], plain.params[k], rtol=0, atol=1e-6)


def test_update_noise_is_reduced_to_pay_for_the_count(config):
    """Central noise on the sum has std z_Δ·C with z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2)."""
    cfg = adaptive(config, noise_multiplier=1.0, clip_count_stddev=2.0, clip_norm=1.0, noise_seed=3)
    m = 5.0
    agg = build_aggregation(cfg, client_dp(cfg, m))
    z_delta = (1.0 - 1 / 16) ** -0.5
    with pytest.warns(UserWarning):  # seeded noise
        out = agg([{"w": torch.zeros(20000, dtype=torch.float64)}], [1.0], [1.0], rng_for(3, 0))
    assert float(out.delta["w"].std()) * m == pytest.approx(z_delta, rel=0.03)


def test_adaptive_clip_survives_a_checkpoint(config):
    runtime = Runtime(adaptive(config))
    runtime.run_round()
    state = runtime.state_dict()
    other = Runtime(adaptive(config))
    other.load_state_dict(state)
    assert other.server.clip_norm == runtime.server.clip_norm != 0.05
    runtime.run_round()
    other.run_round()
    for k in runtime.params:
        assert torch.equal(runtime.params[k], other.params[k])


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["privacy.dp='off'", "privacy.clipping='adaptive'"], "privacy.clipping"),
        (["privacy.clipping='adaptive'", "privacy.clip_count_stddev=0.4"], "privacy.clip_count_stddev"),
        # the default σ_b = m/20 = 1 with 20 clients per round cannot pay for z = 2.5
        (["privacy.clipping='adaptive'", "privacy.noise_multiplier=2.5"], "privacy.clip_count_stddev"),
    ],
)
def test_adaptive_clipping_config_errors(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field and "\n" not in str(err.value)
