"""Example-level DP-SGD in runs: ε per round equals dp-accounting composing every DP-SGD
step's Gaussian evaluations directly, the budget stop uses the same events, and the
combinations it cannot protect are one-line config errors."""

import dp_accounting
import pytest

from fedmeta.config import load_config
from fedmeta.errors import ConfigError
from fedmeta.federated.driver import run_federated
from fedmeta.federated.runtime import Runtime
from fedmeta.rundir import RunDir

SIGMA, Q, DELTA, LOCAL_STEPS = 1.2, 0.2, 1e-5, 2


def example_dp(config, algorithm="fomaml", procedure="fedmeta", **privacy):
    cfg = config("digits", rounds=3, n_clients=8, held_out_clients=2, clients_per_round=3, local_steps=LOCAL_STEPS,
                 local_procedure=procedure, meta={"algorithm": algorithm, "inner_steps": 2})
    settings = {"dp": "example", "noise_multiplier": SIGMA, "example_sample_rate": Q, "delta": DELTA,
                "clip_norm": 1.0, **privacy}
    return cfg.model_copy(update={"privacy": cfg.privacy.model_copy(update=settings)})


def reference_epsilon(evaluations: int, rounds: int) -> float:
    """dp-accounting directly: per DP-SGD step, `evaluations` Gaussians on one Poisson sample."""
    gaussians = dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(SIGMA)] * evaluations)
    acc = dp_accounting.rdp.RdpAccountant()
    acc.compose(dp_accounting.PoissonSampledDpEvent(Q, gaussians), LOCAL_STEPS * rounds)
    return acc.get_epsilon(DELTA)


@pytest.mark.parametrize(("algorithm", "procedure", "evaluations"),
                         [("fomaml", "fedmeta", 3), ("reptile", "fedmeta", 2), ("maml", "sgd", 1)])
def test_epsilon_per_round_matches_dp_accounting(config, algorithm, procedure, evaluations):
    runtime = Runtime(example_dp(config, algorithm, procedure))
    for r in (1, 2):
        info = runtime.run_round().row
        assert info["dp_unit"] == "example"
        assert info["epsilon"] == pytest.approx(reference_epsilon(evaluations, r), rel=1e-6)


def test_budget_stop_counts_the_local_steps(config, tmp_path):
    target = (reference_epsilon(3, 2) + reference_epsilon(3, 3)) / 2
    cfg = example_dp(config, target_epsilon=target)
    summary = run_federated(cfg, RunDir.create(tmp_path / "r", cfg), show_progress=False)
    assert summary["rounds"] == 2 and "would exceed" in summary["stopped"]
    assert summary["epsilon"] == pytest.approx(reference_epsilon(3, 2), rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        (["privacy.dp='example'", "privacy.secure_aggregation='off'"], "meta.algorithm"),  # the demo: 2nd-order MAML
        (["privacy.dp='example'", "meta.algorithm='metasgd'"], "meta.algorithm"),
        (["privacy.dp='example'", "meta.algorithm='fomaml'", "privacy.clipping='adaptive'"], "privacy.clipping"),
        (["privacy.dp='example'", "federated.clients.procedure='perfedavg'"], "federated.clients.procedure"),
        (["privacy.dp='example'", "meta.algorithm='fomaml'", "data.name='sinusoid'"], "data.name"),
    ],
)
def test_unsupported_combinations_are_config_errors(overrides, field):
    with pytest.raises(ConfigError) as err:
        load_config(None, overrides)
    assert err.value.field == field and "\n" not in str(err.value)
