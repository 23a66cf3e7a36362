"""Partitions cover every example once with the promised skew; federated datasets are well formed."""

import torch

from fedmeta.data.federated import ExampleClient, synthetic
from fedmeta.data.partition import dirichlet, natural, shards


def labels(n=2000, classes=10, seed=0):
    return torch.randint(classes, (n,), generator=torch.Generator().manual_seed(seed))


def assert_exact_cover(parts, n):
    allidx = torch.cat(parts).sort().values
    assert torch.equal(allidx, torch.arange(n))


def classes_per_client(y, parts, share=0.05):
    """Classes holding more than `share` of each client's examples, averaged over clients."""
    return sum(int((torch.bincount(y[p], minlength=10).float() / p.numel() > share).sum()) for p in parts) / len(parts)


def test_dirichlet_covers_all_and_alpha_controls_skew():
    y = labels()
    skewed = dirichlet(y, 20, 0.1, torch.Generator().manual_seed(1))
    iid = dirichlet(y, 20, 100.0, torch.Generator().manual_seed(1))
    assert_exact_cover(skewed, y.numel())
    assert_exact_cover(iid, y.numel())
    assert classes_per_client(y, skewed) < 4 < 9 < classes_per_client(y, iid)


def test_shards_give_each_client_few_labels():
    y = labels()
    parts = shards(y, 20, 2, torch.Generator().manual_seed(0))
    assert_exact_cover(parts, y.numel())
    assert max(int(y[p].unique().numel()) for p in parts) <= 4  # 2 shards, each spanning ≤ 2 labels


def test_natural_groups():
    parts = natural(["a", "b", "a", "c", "b"])
    assert [p.tolist() for p in parts] == [[0, 2], [1, 4], [3]]


def test_synthetic_alpha_beta_is_heterogeneous_and_deterministic():
    a = synthetic(1.0, 1.0, 5, torch.Generator().manual_seed(0))
    b = synthetic(1.0, 1.0, 5, torch.Generator().manual_seed(0))
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b))
    assert all(x.shape[1] == 60 and x.shape[0] >= 50 for x, _ in a)
    # different clients have different label distributions (their own W_k, b_k)
    hists = torch.stack([torch.bincount(y, minlength=10).float() / y.numel() for _, y in a])
    assert (hists.max(0).values - hists.min(0).values).max() > 0.3


def test_example_client_episodes_are_disjoint_draws_of_its_own_data():
    x = torch.arange(30, dtype=torch.float32)[:, None]
    c = ExampleClient(x, torch.arange(30) % 3, 10, 15, "classification", 3)
    b = c.sample(8, torch.Generator().manual_seed(0))
    for i in range(8):
        s, q = set(b.xs[i, :, 0].tolist()), set(b.xq[i, :, 0].tolist())
        assert len(s) == 10 and len(q) == 15 and not s & q
        torch.testing.assert_close(b.ys[i], b.xs[i, :, 0].long() % 3)


def test_sinusoid_regions_drawn_together_are_each_regions_own_draws():
    """`sample_regions` makes region i's draws from its own generator: bit for bit what
    `regions[i].sample` gives (what a deployed client computes), for ranges that differ."""
    from fedmeta.data.sinusoid import Sinusoid, sample_regions

    rng = torch.Generator().manual_seed(1)
    ranges = [tuple(sorted(torch.rand(2, generator=rng).mul(5).tolist())) for _ in range(64)]
    regions = [Sinusoid(k_shot=5, k_query=7, amplitude=(lo + 0.1, hi + 0.1), phase=(lo / 2, hi)) for lo, hi in ranges]
    gens = [torch.Generator().manual_seed(100 + i) for i in range(len(regions))]
    b = sample_regions(regions, 3, gens)
    assert b.xs.shape == (64, 3, 5, 1) and b.xq.shape == (64, 3, 7, 1)
    for i, region in enumerate(regions):
        mine = torch.Generator().manual_seed(100 + i)
        own = region.sample(3, mine)
        assert all(torch.equal(getattr(b, f)[i], getattr(own, f)) for f in ("xs", "ys", "xq", "yq"))
        assert torch.equal(gens[i].get_state(), mine.get_state())  # each stream left where `sample` leaves it
    assert float(b.xs.min()) >= -5 and float(b.xs.max()) <= 5