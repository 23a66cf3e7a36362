"""Server strategies against hand computations and the formulas of Reddi et al. 2021."""

import numpy as np
import pytest
import torch

from fedmeta.federated.strategies import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
)
from fedmeta.params import weighted_mean


def test_weighted_mean_is_the_hand_computation():
    a = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor(3.0)}
    b = {"w": torch.tensor([4.0, -2.0]), "b": torch.tensor(0.0)}
    c = {"w": torch.tensor([0.0, 1.0]), "b": torch.tensor(-1.0)}
    out = weighted_mean([a, b, c], [10, 30, 60])
    # (10·1 + 30·4 + 60·0)/100 = 1.3 ; (10·2 − 30·2 + 60·1)/100 = 0.2 ; (30 + 0 − 60)/100 = −0.3
    torch.testing.assert_close(out["w"], torch.tensor([1.3, 0.2]))
    torch.testing.assert_close(out["b"], torch.tensor(-0.3))


def test_fedavg_and_fedavgm():
    p, d = {"x": torch.tensor([1.0, -1.0])}, {"x": torch.tensor([0.5, 0.25])}
    new, _ = FedAvg().apply(p, d, FedAvg().init(p))
    torch.testing.assert_close(new["x"], torch.tensor([1.5, -0.75]))
    s = FedAvgM(lr=0.5, momentum=0.9)
    state = s.init(p)
    p1, state = s.apply(p, d, state)
    p2, state = s.apply(p1, d, state)
    # v1 = d, v2 = 0.9 d + d = 1.9 d ; x2 = x0 + 0.5 (d + 1.9 d)
    torch.testing.assert_close(p2["x"], p["x"] + 0.5 * 2.9 * d["x"])


@pytest.mark.parametrize("cls", [FedAdam, FedYogi, FedAdagrad])
def test_fedopt_matches_reddi_algorithm_2(cls):
    rng = np.random.default_rng(0)
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x = rng.normal(size=5)
    deltas = [rng.normal(size=5) for _ in range(4)]
    m, v, xr = np.zeros(5), np.full(5, tau**2), x.copy()
    for d in deltas:  # Reddi et al. 2021, Algorithm 2, written out in numpy
        m = b1 * m + (1 - b1) * d
        if cls is FedAdagrad:
            v = v + d**2
        elif cls is FedAdam:
            v = b2 * v + (1 - b2) * d**2
        else:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        xr = xr + eta * m / (np.sqrt(v) + tau)
    s = cls(lr=eta, beta1=b1, beta2=b2, tau=tau)
    p = {"x": torch.tensor(x)}
    state = s.init(p)
    for d in deltas:
        p, state = s.apply(p, {"x": torch.tensor(d)}, state)
    np.testing.assert_allclose(p["x"].numpy(), xr, rtol=1e-12)
