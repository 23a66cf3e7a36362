"""Client-level DP in the runtime: ε per round equals dp-accounting's own figure for the same
events, the budget stop lands on the right round, local noise shares add up to σC, and
incompatible options are one-line config errors."""

import dp_accounting
import pytest
import torch

from fedmeta.config import load_config
from fedmeta.errors import ConfigError
from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import Runtime
from fedmeta.privacy.noise import rng_for
from fedmeta.rundir import RunDir

SIGMA, DELTA = 1.1, 1e-5


def reference_epsilon(q: float, rounds: int) -> float:
    """dp-accounting called directly: `rounds` Poisson-subsampled Gaussian events."""
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(SIGMA)), rounds)
    return acc.get_epsilon(DELTA)


def dp_config(config, **privacy):
    cfg = config("sinusoid", rounds=6, n_clients=20, clients_per_round=5, held_out_clients=2, eval_every=2)
    return cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update={"dp": "central", "noise_multiplier": SIGMA,
                                                                             "delta": DELTA, "noise_seed": 7, **privacy})})


def test_epsilon_per_round_matches_dp_accounting(config):
    runtime = Runtime(dp_config(config))
    q = runtime.server.sampler.rate
    assert q == pytest.approx(5 / 20)
    for r in range(1, 4):
        with pytest.warns(UserWarning):  # seeded noise is flagged as not secure
            info = runtime.run_round().row
        assert info["epsilon"] == pytest.approx(reference_epsilon(q, r), rel=1e-9)


def test_budget_stop_triggers_at_the_right_round(config, tmp_path):
    q = 5 / 20
    target = (reference_epsilon(q, 3) + reference_epsilon(q, 4)) / 2  # 3 rounds fit, a 4th would not
    cfg = dp_config(config, target_epsilon=target)
    with pytest.warns(UserWarning):
        summary = run_federated(cfg, RunDir.create(tmp_path / "r", cfg), show_progress=False)
    assert summary["rounds"] == 3
    assert "would exceed target ε" in summary["stopped"]
    assert summary["epsilon"] == pytest.approx(reference_epsilon(q, 3)) and summary["epsilon"] <= target


def test_local_dp_shares_sum_to_central_noise(config):
    """Each of m expected clients adds N(0, σ²C²/m): m shares have the central std σC."""
    runtime = Runtime(dp_config(config, dp="local", clip_norm=0.5, noise_seed=None))
    zero = {k: torch.zeros(4000) for k in ("a",)}
    m = runtime.server.sampler.rate * len(runtime.data.train)
    dp, seed = runtime.clients.client_dp, runtime.cfg.privacy.noise_seed
    total = sum(dp.privatize(zero, runtime.server.clip_norm, rng_for(seed, 1, c + 1))[0]["a"] for c in range(int(m)))
    assert float(total.std()) == pytest.approx(SIGMA * 0.5, rel=0.05)


@pytest.mark.parametrize("secure", ["off", "secagg"])
def test_the_servers_aggregate_keeps_the_local_noise_the_accountant_counts(secure):
    """Local DP, through the server's aggregation pipeline: m clients with Δ = 0 send only
    their noise shares, and the mean the strategy gets has std z·C/m, as the accountant
    assumes. Clipping each noisy update again to C in the clear (≈ 0.5·C·√d ≫ C here), or
    saturating coordinates at ±C in secure aggregation's fixed point, would cut it."""
    import numpy as np

    from fedmeta.federated.aggregation import DPMean, SecAggSum
    from fedmeta.federated.dp_fedavg import ClientLevelDP

    z, clip_norm, m, d = 1.0, 0.5, 4, 20_000
    dp = ClientLevelDP("local", z, clip_norm, float(m), 1.0)
    shares = [dp.privatize({"a": torch.zeros(d)}, clip_norm, np.random.default_rng(c))[0] for c in range(m)]
    mean = DPMean(dp, None if secure == "off" else SecAggSum(secure))(shares, [1.0] * m, [0.0] * m,
                                                                      np.random.default_rng(9)).delta["a"]
    assert float(mean.double().std()) == pytest.approx(z * clip_norm / m, rel=0.03)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["privacy.dp='central'"], "privacy.dp"),  # the demo minus [federated]: not federated
        (["privacy.target_epsilon=1.0"], "privacy.target_epsilon"),
    ],
)
def test_incompatible_options_are_one_line_errors(tmp_path, overrides, field):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[data]\nname = "sinusoid"\n')
    with pytest.raises(ConfigError) as err:
        load_config(cfg, overrides)
    assert err.value.field == field and "\n" not in str(err.value)


@pytest.mark.parametrize("protocol", ["secagg", "secagg+", "ckks"])
@pytest.mark.parametrize("dp", ["off", "central"])
def test_secure_aggregation_equals_the_plaintext_aggregate(config, protocol, dp):
    """Same round through the secure (or CKKS) sum and in the clear: equal to fixed-point
    (or CKKS) precision."""
    base = config("sinusoid", rounds=2, n_clients=12, clients_per_round=6, held_out_clients=2, local_lr=0.005)
    privacy = {"dp": dp, "noise_multiplier": 0.0, "clip_norm": 0.5}
    plain = Runtime(base.model_copy(update={"privacy": base.privacy.model_copy(update=privacy)}))
    secure = Runtime(base.model_copy(update={"privacy": base.privacy.model_copy(update={**privacy, "secure_aggregation": protocol})}))
    for _ in range(2):
        plain.run_round()
        info = secure.run_round().row
    if protocol == "ckks":
        assert info["he_bytes_up"] > 0 and info["he_max_abs_error"] < 1e-6
    else:
        assert info["secagg_included"] == info["clients"] and info["secagg_bytes_up"] > 0
    for k in plain.params:
        torch.testing.assert_close(secure.params[k], plain.params[k], rtol=0, atol=1e-6)
    assert any(not torch.equal(secure.params[k], plain.params[k]) for k in plain.params)  # really went through the ring


def test_unreachable_target_epsilon_is_a_config_error(config):
    """A target below one round's ε (dp-accounting's figure) cannot be met: refused up front."""
    one_round = reference_epsilon(5 / 20, 1)
    with pytest.raises(ConfigError) as err:
        Runtime(dp_config(config, target_epsilon=one_round * 0.99))
    assert err.value.field == "privacy.target_epsilon" and "\n" not in str(err.value)
    assert Runtime(dp_config(config, target_epsilon=one_round * 1.01)).server.affordable_rounds == 1
