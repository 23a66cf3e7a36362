"""Few-shot digits: arrays match scikit-learn, disjoint class splits, consistent episodes."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fedmeta.data.digits import Digits, digits_arrays
from fedmeta.errors import DataError


def test_arrays_match_scikit_learn():
    x, y = digits_arrays()
    bunch = load_digits()
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    np.testing.assert_allclose(x.numpy()[:, 0] * 16, bunch.images, atol=1e-5)
    np.testing.assert_array_equal(y.numpy(), bunch.target)
    assert x.min() == 0.0 and x.max() == 1.0


@pytest.mark.parametrize("held_out", [(5, 6, 7, 8, 9), (0, 3)])
def test_class_split_is_disjoint(held_out):
    train, test = (
        Digits("train", n_way=2, test_classes=held_out),
        Digits("test", n_way=2, test_classes=held_out),
    )
    assert set(test.classes) == set(held_out)
    assert not set(train.classes) & set(test.classes)
    assert set(train.classes) | set(test.classes) == set(range(10))


def test_episodes_have_the_right_shapes_and_sources():
    dist = Digits("test", n_way=5, k_shot=3, k_query=4)
    x, y = digits_arrays()
    idx = dist.sample_indices(6, torch.Generator().manual_seed(0))
    batch = dist.episodes(idx)
    assert dist.kind == "classification" and dist.n_outputs == 5 and dist.x_shape == (1, 8, 8)
    assert batch.xs.shape == (6, 15, 1, 8, 8) and batch.xq.shape == (6, 20, 1, 8, 8)
    assert batch.ys.dtype == batch.yq.dtype == torch.int64
    support, query = dist.rows(idx)  # rows of digits_arrays(), (tasks, n_way, k)
    for t in range(6):
        for j in range(5):
            s, q = support[t, j], query[t, j]
            assert not set(s) & set(q) and len(set(s)) == 3 and len(set(q)) == 4
            digit = dist.classes[int(idx.classes[t, j])]
            assert (y[s] == digit).all() and (y[q] == digit).all()
            np.testing.assert_array_equal(batch.xs[t, batch.ys[t] == j].numpy(), x[s].numpy())
            np.testing.assert_array_equal(batch.xq[t, batch.yq[t] == j].numpy(), x[q].numpy())
        assert (
            set(y[support[t, :, 0]].tolist()) <= set(dist.classes)
            and len(set(idx.classes[t].tolist())) == 5
        )


def test_labels_are_permuted_per_episode():
    dist = Digits("train", n_way=5, k_shot=1, k_query=1)
    idx = dist.sample_indices(100, torch.Generator().manual_seed(1))
    labels_of = defaultdict(set)
    for t in range(100):
        for j, c in enumerate(idx.classes[t].tolist()):
            labels_of[c].add(j)
    assert all(labels == set(range(5)) for labels in labels_of.values())


def test_same_seed_same_episode():
    dist = Digits("train", n_way=3, k_shot=2, k_query=2)
    a, b, c = (dist.sample(4, torch.Generator().manual_seed(s)) for s in (3, 3, 4))
    for u, v in zip((a.xs, a.ys, a.xq, a.yq), (b.xs, b.ys, b.xq, b.yq)):
        assert torch.equal(u, v)
    assert not torch.equal(a.xs, c.xs)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"n_way": 6}, "data.n_way"),
        ({"n_way": 0}, "data.n_way"),
        ({"k_shot": 100, "k_query": 100}, "data.k_query"),
        ({"test_classes": (3, 11)}, "data.test_classes"),
        ({"split": "val"}, "data.split"),
    ],
)
def test_bad_episode_shapes_name_the_field(kwargs, field):
    with pytest.raises(DataError) as err:
        Digits(**kwargs)
    assert err.value.field == field
