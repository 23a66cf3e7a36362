"""Robust aggregators against references computed here from their definitions (sorting,
brute-force Krum scores, scipy's minimiser of the geometric-median objective), and their
robustness to Byzantine clients next to the plain weighted mean."""

import numpy as np
import pytest
import scipy.optimize
import scipy.stats
import torch

from fedmeta.errors import BadInput
from fedmeta.federated.attacks import make_attack
from fedmeta.federated.robust import ROBUST, MultiKrum, make_robust
from fedmeta.federated.robust.base import as_rows as robust_rows
from fedmeta.params import weighted_mean

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def random_updates(n, seed=0, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    return [{k: torch.randn(s, generator=g) for k, s in shapes.items()} for _ in range(n)]


def stacked(updates, key):  # (clients, *shape), float64 numpy
    return np.stack([u[key].double().numpy() for u in updates])


def sorted_definition(updates, key, cut):
    """Mean of the sorted values from rank `cut` to n − cut − 1, per coordinate."""
    x = np.sort(stacked(updates, key), axis=0)
    return x[cut : len(updates) - cut].mean(axis=0)


@pytest.mark.parametrize("n", [7, 8])
def test_median_is_numpys_median_per_coordinate(n):
    ups = random_updates(n, seed=n)
    out = make_robust("median")(ups, [1.0 + i for i in range(n)])  # weights ignored
    for k, shape in SHAPES.items():
        assert out[k].shape == shape and out[k].dtype == torch.float32
        np.testing.assert_allclose(out[k].numpy(), np.median(stacked(ups, k), axis=0), rtol=1e-6, atol=1e-6)
        middle = (n - 1) // 2  # odd n: the middle value; even n: the mean of the two middle ones
        np.testing.assert_allclose(out[k].numpy(), sorted_definition(ups, k, middle), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("n", "beta"), [(10, 0.1), (11, 0.25), (12, 0.33), (9, 0.49), (8, 0.0)])
def test_trimmed_mean_is_scipys_trim_mean(n, beta):
    ups = random_updates(n, seed=100 + n)
    out = make_robust("trimmed_mean", trim_fraction=beta)(ups, [1.0] * n)
    for k in SHAPES:
        np.testing.assert_allclose(out[k].numpy(), scipy.stats.trim_mean(stacked(ups, k), beta, axis=0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(out[k].numpy(), sorted_definition(ups, k, int(np.floor(beta * n))), rtol=1e-6, atol=1e-6)


def brute_force_krum_scores(rows, f):
    n = len(rows)
    scores = []
    for i in range(n):
        d = sorted(float(np.sum((rows[i] - rows[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(d[: n - f - 2]))
    return np.array(scores)


def as_rows(updates):
    return np.stack([np.concatenate([u[k].double().numpy().ravel() for k in SHAPES]) for u in updates])


@pytest.mark.parametrize(("n", "f"), [(5, 1), (12, 3), (13, 5)])
def test_krum_picks_the_brute_force_choice(n, f):
    ups = random_updates(n, seed=n + f)
    rows = as_rows(ups)
    scores = brute_force_krum_scores(rows, f)
    best = int(np.argmin(scores))
    out = make_robust("krum", byzantine_clients=f)(ups, [1.0] * n)
    for k in SHAPES:
        torch.testing.assert_close(out[k], ups[best][k], rtol=0, atol=0)
    m = n - f  # Multi-Krum: the weighted mean of the m best-scoring updates
    weights = [float(i % 3 + 1) for i in range(n)]
    chosen = np.argsort(scores, kind="stable")[:m]
    assert MultiKrum(f).select(robust_rows(ups, weights)[0]).tolist() == chosen.tolist()
    w = np.array(weights)[chosen]
    expected = (w[:, None] * rows[chosen]).sum(0) / w.sum()
    got = as_rows([make_robust("multikrum", byzantine_clients=f)(ups, weights)])[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_multikrum_with_no_byzantine_clients_and_all_selected_is_the_weighted_mean():
    ups, weights = random_updates(6, seed=3), [1.0, 2.0, 3.0, 1.0, 5.0, 0.5]
    out = make_robust("multikrum", byzantine_clients=0)(ups, weights)
    ref = weighted_mean(ups, weights)
    for k in SHAPES:
        torch.testing.assert_close(out[k], ref[k])


def objective(z, rows, w):
    return float(np.sum(w * np.linalg.norm(rows - z, axis=1)))


@pytest.mark.parametrize("outliers", [0, 3])
def test_geometric_median_minimises_the_sum_of_distances(outliers):
    shapes = {"a": (2, 2), "c": (1,)}
    ups = random_updates(11, seed=outliers, shapes=shapes)
    for u in ups[:outliers]:
        u["a"] = u["a"] * 50 + 20
    weights = [1.0 + (i % 4) for i in range(len(ups))]
    rows = np.stack([np.concatenate([u[k].double().numpy().ravel() for k in shapes]) for u in ups])
    w = np.array(weights) / sum(weights)
    out = make_robust("geometric_median")(ups, weights)
    z = np.concatenate([out[k].double().numpy().ravel() for k in shapes])
    mean = w @ rows
    ref = scipy.optimize.minimize(objective, mean, args=(rows, w), method="Nelder-Mead",
                                  options={"xatol": 1e-10, "fatol": 1e-12, "maxiter": 20000, "maxfev": 20000})
    assert objective(z, rows, w) < objective(mean, rows, w)
    assert objective(z, rows, w) <= ref.fun * (1 + 1e-6)
    np.testing.assert_allclose(z, ref.x, atol=1e-4)


def honest_and_byzantine(n=20, f=4, seed=0):
    """Honest updates μ + 0.1·ε around a common direction μ; the first f clients are Byzantine."""
    g = torch.Generator().manual_seed(seed)
    mu = {k: torch.randn(s, generator=g) for k, s in {"w": (8, 5), "b": (10,)}.items()}
    ups = [{k: v + 0.1 * torch.randn(v.shape, generator=g) for k, v in mu.items()} for _ in range(n)]
    return ups[:f], ups[f:], g


def distance(a, b):
    return float(torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in a)))


ROBUST_UNDER_TEST = {
    "median": {},
    "trimmed_mean": {"trim_fraction": 0.25},
    "krum": {"byzantine_clients": 4},
    "multikrum": {"byzantine_clients": 4},
    "geometric_median": {},
}


@pytest.mark.parametrize("attack", ["scaling", "sign_flip"])
def test_robust_aggregates_stay_near_the_honest_mean_while_the_mean_is_pulled_away(attack):
    byzantine, honest, g = honest_and_byzantine()
    attacker = make_attack(attack, scale=1000.0)
    sent = [attacker(d, honest, g) for d in byzantine] + honest
    weights = [1.0] * len(sent)
    target = weighted_mean(honest, [1.0] * len(honest))
    spread = np.sqrt(np.mean([distance(h, target) ** 2 for h in honest]))  # ≈ 0.1·√50
    assert distance(weighted_mean(sent, weights), target) > 100 * spread
    for name, options in ROBUST_UNDER_TEST.items():
        assert distance(make_robust(name, **options)(sent, weights), target) < 1.5 * spread, name
    # norm bounding at the largest honest norm: within (f/n)(M + ‖honest mean‖) of it
    bound = max(distance(h, {k: torch.zeros_like(v) for k, v in h.items()}) for h in honest)
    clipped = make_robust("norm_bound", norm_bound=bound)(sent, weights)
    zero = {k: torch.zeros_like(v) for k, v in target.items()}
    assert distance(clipped, target) <= 4 / 20 * (bound + distance(target, zero)) * (1 + 1e-5)


def test_every_registered_aggregator_keeps_names_shapes_and_dtypes():
    ups = random_updates(9, seed=5)
    for name in ROBUST:
        out = make_robust(name)(ups, [1.0] * 9)
        assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in ups[0].items()}


@pytest.mark.parametrize(
    ("name", "options", "field"),
    [
        ("trimmed_mean", {"trim_fraction": 0.5}, "federated.robust.trim_fraction"),
        ("trimmed_mean", {"trim_fraction": -0.1}, "federated.robust.trim_fraction"),
        ("krum", {"byzantine_clients": -1}, "federated.robust.byzantine_clients"),
        ("multikrum", {"byzantine_clients": 1.5}, "federated.robust.byzantine_clients"),
        ("multikrum", {"krum_selected": 0}, "federated.robust.krum_selected"),
        ("geometric_median", {"geomed_smoothing": 0.0}, "federated.robust.geomed_smoothing"),
        ("geometric_median", {"geomed_max_iter": 0}, "federated.robust.geomed_max_iter"),
        ("norm_bound", {"norm_bound": float("inf")}, "federated.robust.norm_bound"),
        ("median", {"trim_fraction": 0.1}, "federated.robust.trim_fraction"),
        ("bulyan", {}, "federated.robust.rule"),
    ],
)
def test_bad_options_name_their_field_on_construction(name, options, field):
    with pytest.raises(BadInput) as err:
        make_robust(name, **options)
    assert err.value.field == field and field in str(err.value)


@pytest.mark.parametrize(("name", "options", "n", "field"), [
    ("krum", {"byzantine_clients": 2}, 6, "federated.robust.byzantine_clients"),  # needs n > 2f + 2 = 6
    ("multikrum", {"byzantine_clients": 0}, 2, "federated.robust.byzantine_clients"),
    ("multikrum", {"byzantine_clients": 2, "krum_selected": 6}, 7, "federated.robust.krum_selected"),  # m <= n − f
])
def test_krum_checks_the_round_size_when_called(name, options, n, field):
    aggregate = make_robust(name, **options)
    with pytest.raises(BadInput) as err:
        aggregate(random_updates(n), [1.0] * n)
    assert err.value.field == field
    aggregate(random_updates(n + 1), [1.0] * (n + 1))  # one more update is enough


def test_krum_ignores_weights_even_a_zero_weight_on_its_choice():
    ups = random_updates(7, seed=11)
    best = int(np.argmin(brute_force_krum_scores(as_rows(ups), 1)))
    weights = [1.0] * 7
    weights[best] = 0.0
    out = make_robust("krum", byzantine_clients=1)(ups, weights)
    for k in SHAPES:
        torch.testing.assert_close(out[k], ups[best][k], rtol=0, atol=0)
