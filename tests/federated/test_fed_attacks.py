"""Malicious-client behaviours against their formulas, computed here with numpy and scipy."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from fedmeta.errors import BadInput
from fedmeta.federated.attacks import ATTACKS, little_is_enough_z, make_attack


def batch(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [{"w": torch.randn(6, 7, generator=g), "b": torch.randn(7, generator=g)} for _ in range(n)]


def test_sign_flip_and_scaling_are_multiples_of_the_honest_update():
    delta, honest = batch(1)[0], batch(5, seed=1)
    flipped = make_attack("sign_flip", scale=3.0)(delta, honest, torch.Generator())
    scaled = make_attack("scaling", scale=20.0)(delta, honest, torch.Generator())
    for k in delta:
        np.testing.assert_allclose(flipped[k].numpy(), -3.0 * delta[k].numpy(), rtol=1e-6)
        np.testing.assert_allclose(scaled[k].numpy(), 20.0 * delta[k].numpy(), rtol=1e-6)


def test_gaussian_noise_is_reproducible_from_the_generator_and_has_the_asked_spread():
    delta = {"w": torch.zeros(200, 200), "b": torch.ones(3)}
    attack = make_attack("gaussian", noise_std=0.5)
    a = attack(delta, [], torch.Generator().manual_seed(7))
    b = attack(delta, [], torch.Generator().manual_seed(7))
    c = attack(delta, [], torch.Generator().manual_seed(8))
    assert all(torch.equal(a[k], b[k]) for k in delta)
    assert not torch.equal(a["w"], c["w"])
    noise = a["w"].double().numpy().ravel()  # 40 000 draws of N(0, 0.25)
    assert abs(noise.mean()) < 4 * 0.5 / math.sqrt(noise.size)
    assert abs(noise.std() - 0.5) < 0.01
    same = make_attack("gaussian", noise_std=0.0)(delta, [], torch.Generator())
    assert all(torch.equal(same[k], delta[k]) for k in delta)


def test_little_is_enough_is_mean_minus_z_std_of_the_honest_updates():
    honest, f = batch(16, seed=2), 4
    n = len(honest) + f
    s = n // 2 + 1 - f  # Baruch et al.: honest clients the attackers must win over for a majority
    z = norm.ppf((n - s) / n)
    assert little_is_enough_z(n, f) == pytest.approx(z)
    for attack, zz in [(make_attack("little_is_enough", byzantine_clients=f), z),
                       (make_attack("little_is_enough", byzantine_clients=f, z=1.5), 1.5)]:
        out = attack(batch(1, seed=9)[0], honest, torch.Generator())
        for k in out:
            x = np.stack([h[k].double().numpy() for h in honest])
            np.testing.assert_allclose(out[k].numpy(), x.mean(0) - zz * x.std(0), rtol=1e-5, atol=1e-6)


def test_every_registered_attack_keeps_names_shapes_and_dtypes():
    delta, honest = batch(1)[0], batch(5, seed=1)
    for name in ATTACKS:
        out = make_attack(name)(delta, honest, torch.Generator().manual_seed(0))
        assert {k: (v.shape, v.dtype) for k, v in out.items()} == {k: (v.shape, v.dtype) for k, v in delta.items()}


@pytest.mark.parametrize(("name", "options", "field"), [
    ("sign_flip", {"scale": 0.0}, "federated.attack.scale"),
    ("scaling", {"scale": float("nan")}, "federated.attack.scale"),
    ("gaussian", {"noise_std": -1.0}, "federated.attack.noise_std"),
    ("little_is_enough", {"byzantine_clients": 0}, "federated.attack.byzantine_clients"),
    ("little_is_enough", {"z": -1.0}, "federated.attack.z"),
    ("scaling", {"noise_std": 1.0}, "federated.attack.noise_std"),
    ("label_flip", {}, "federated.attack.name"),
])
def test_bad_attack_options_name_their_field(name, options, field):
    with pytest.raises(BadInput) as err:
        make_attack(name, **options)
    assert err.value.field == field


def test_little_is_enough_refuses_a_byzantine_majority_and_an_empty_honest_batch():
    attack = make_attack("little_is_enough", byzantine_clients=6)
    with pytest.raises(BadInput, match="federated.attack.byzantine_clients"):
        attack(batch(1)[0], batch(5), torch.Generator())  # n = 11, f = 6 > n/2
    attack(batch(1)[0], batch(6), torch.Generator())  # n = 12, f = 6: allowed
    with pytest.raises(BadInput, match="federated.attack.byzantine_clients"):
        attack(batch(1)[0], [], torch.Generator())
