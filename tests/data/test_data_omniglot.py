"""Omniglot loading, alphabet splits, episodes, Lake et al.'s one-shot runs and download errors."""

from __future__ import annotations

import io
import os
import re
import urllib.error
import zipfile
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from fedmeta.data import omniglot as og
from fedmeta.data.episodes import EpisodeIndices
from fedmeta.errors import DataError, FedmetaError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"
SMALL = ("images_background_small1", "images_background_small2")
pytestmark = pytest.mark.skipif(
    not (SHARED / "all_runs.zip").is_file(), reason=f"Omniglot subset not found at {SHARED}"
)


@pytest.fixture(scope="module")
def images() -> og.OmniglotImages:
    return og.load_omniglot(SHARED, cache=False)


@pytest.fixture(scope="module")
def runs() -> list[og.LakeRun]:
    return og.load_lake_runs(SHARED)


def zip_characters(name: str) -> dict[tuple[str, str], list[str]]:
    """(alphabet, character) -> PNG member names, read straight from the zip listing."""
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    for member in zipfile.ZipFile(SHARED / f"{name}.zip").namelist():
        if member.endswith(".png"):
            _, alphabet, character, _ = member.split("/")
            out[(alphabet, character)].append(member)
    return out


def only(tmp_path: Path, *names: str) -> Path:
    """A folder holding links to some of the shared files."""
    for name in names:
        (tmp_path / name).symlink_to(SHARED / name)
    return tmp_path


# --- loading ----------------------------------------------------------------------------


def test_small_sets_are_deduplicated(images, tmp_path):
    small1, small2 = zip_characters(SMALL[0]), zip_characters(SMALL[1])
    shared = set(small1) & set(small2)
    assert {a for a, _ in shared} == {"Greek", "Latin"}
    z1, z2 = (zipfile.ZipFile(SHARED / f"{n}.zip") for n in SMALL)
    for key in shared:  # the duplicate copies are the same files, so either may be kept
        for m1, m2 in zip(sorted(small1[key]), sorted(small2[key])):
            assert m1.split("/", 1)[1] == m2.split("/", 1)[1] and z1.read(m1) == z2.read(m2)

    keys = list(zip(images.alphabets, images.characters))
    assert len(keys) == len(set(keys)) == len(set(small1) | set(small2))
    assert images.images.shape == (len(keys), 20, 28, 28) and images.images.dtype == np.uint8

    alone = og.load_omniglot(only(tmp_path, f"{SMALL[1]}.zip"), cache=False)
    rows = {k: i for i, k in enumerate(keys)}
    for i, key in enumerate(zip(alone.alphabets, alone.characters)):
        np.testing.assert_array_equal(alone.images[i], images.images[rows[key]])


def test_pixels_match_an_area_downsample_of_the_png(images):
    """Strokes are 1 and paper 0, orientation kept: compare with torch's area resampling."""
    key = ("Balinese", "character01")
    row = list(zip(images.alphabets, images.characters)).index(key)
    with zipfile.ZipFile(SHARED / f"{SMALL[0]}.zip") as archive:
        for member in sorted(zip_characters(SMALL[0])[key]):
            drawer = int(re.search(r"_(\d+)\.png$", member).group(1))
            png = Image.open(io.BytesIO(archive.read(member))).convert("L")
            ink = torch.from_numpy(1.0 - np.asarray(png, np.float32) / 255)  # (105, 105)
            reference = F.interpolate(ink[None, None], size=(28, 28), mode="area")[0, 0].numpy()
            ours = images.images[row, drawer - 1] / 255.0
            assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.95
            assert abs(ours.sum() - reference.sum()) < 0.1 * reference.sum()


def extract_tagalog(dest: Path) -> Path:
    """An extracted-folder copy of the Tagalog alphabet (17 characters) under dest."""
    with zipfile.ZipFile(SHARED / f"{SMALL[1]}.zip") as archive:
        archive.extractall(dest, [m for m in archive.namelist() if "/Tagalog/" in m])
    return dest


def test_extracted_folder_reads_like_the_zip(images, tmp_path):
    loaded = og.load_omniglot(extract_tagalog(tmp_path), cache=False)
    assert set(loaded.alphabets) == {"Tagalog"} and set(loaded.sets) == {SMALL[1]}
    rows = {k: i for i, k in enumerate(zip(images.alphabets, images.characters))}
    for i, key in enumerate(zip(loaded.alphabets, loaded.characters)):
        np.testing.assert_array_equal(loaded.images[i], images.images[rows[key]])


def test_cache_is_reused_and_keyed_by_the_sources(tmp_path, monkeypatch):
    data, cache = extract_tagalog(tmp_path / "data"), tmp_path / "cache"
    first = og.load_omniglot(data, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded although a cache file exists")

    with monkeypatch.context() as m:
        m.setattr(og, "_decode", no_decoding)
        second = og.load_omniglot(data, cache_dir=cache)
    np.testing.assert_array_equal(first.images, second.images)
    assert (first.alphabets, first.characters, first.sets) == (
        second.alphabets,
        second.characters,
        second.sets,
    )

    os.utime(next(data.rglob("*.png")), ns=(0, 0))  # a changed source gets a new cache entry
    og.load_omniglot(data, cache_dir=cache)
    assert len(list(cache.glob("*.npz"))) == 2


# --- paths and bad input --------------------------------------------------------------------


def test_data_dir_accepts_the_folder_its_parent_and_the_environment(monkeypatch):
    assert og.resolve_data_dir(str(SHARED)) == SHARED
    assert og.resolve_data_dir(str(SHARED.parent)) == SHARED
    monkeypatch.setenv("FEDMETA_DATA", str(SHARED.parent))
    assert og.resolve_data_dir(None) == SHARED


@pytest.mark.parametrize("case", ["missing", "empty", "corrupt", "unset"])
def test_bad_data_dir_names_the_field(case, tmp_path, monkeypatch):
    monkeypatch.delenv("FEDMETA_DATA", raising=False)
    value: Path | None = tmp_path
    if case == "missing":
        value = tmp_path / "nowhere"
    elif case == "corrupt":
        (tmp_path / "images_background.zip").write_bytes(b"not a zip at all")
    elif case == "unset":
        value = None
    with pytest.raises(DataError) as err:
        og.load_omniglot(value, cache=False)
    assert err.value.field == "data.data_dir"
    assert "\n" not in str(err.value)


def test_too_many_ways_or_shots_name_the_field(images):
    n_test = sum(a in og.default_test_alphabets(images) for a in images.alphabets)
    with pytest.raises(DataError) as err:
        og.Omniglot(images, "test", n_way=n_test + 1)
    assert err.value.field == "data.n_way" and str(n_test) in str(err.value)
    og.Omniglot(images, "test", n_way=n_test)
    with pytest.raises(DataError) as err:
        og.Omniglot(images, "train", k_shot=5, k_query=16)
    assert err.value.field == "data.k_query"
    with pytest.raises(DataError) as err:
        og.Omniglot(images, "train", test_alphabets=["Klingon"])
    assert err.value.field == "data.test_alphabets"


# --- splits and episodes ----------------------------------------------------------------------


def test_splits_hold_out_whole_alphabets(images):
    names = sorted(set(images.alphabets))
    assert og.default_test_alphabets(images) == names[-2:]
    for held_out in (None, ["Greek", "Korean", "Tagalog"]):
        train = og.Omniglot(images, "train", test_alphabets=held_out)
        test = og.Omniglot(images, "test", test_alphabets=held_out)
        train_alpha = {images.alphabets[i] for i in train.characters.tolist()}
        test_alpha = {images.alphabets[i] for i in test.characters.tolist()}
        assert not train_alpha & test_alpha
        assert train_alpha | test_alpha == set(names)
        assert len(train.characters) + len(test.characters) == len(images.alphabets)
        if held_out is not None:
            assert test_alpha == set(held_out)


def test_episode_shapes_and_labels(images):
    dist = og.Omniglot(images, "train", n_way=5, k_shot=2, k_query=3)
    batch = dist.sample(4, torch.Generator().manual_seed(0))
    assert dist.kind == "classification" and dist.n_outputs == 5 and dist.x_shape == (1, 28, 28)
    assert batch.xs.shape == (4, 10, 1, 28, 28) and batch.xq.shape == (4, 15, 1, 28, 28)
    assert batch.xs.dtype == batch.xq.dtype == torch.float32
    assert batch.ys.shape == (4, 10) and batch.yq.shape == (4, 15)
    assert batch.ys.dtype == batch.yq.dtype == torch.int64
    for labels, k in ((batch.ys, 2), (batch.yq, 3)):
        assert (torch.bincount(labels.flatten(), minlength=5) == 4 * k).all()
    assert 0.0 <= batch.xs.min() and batch.xs.max() <= 1.0


def test_support_and_query_of_a_label_come_from_one_class(images):
    dist = og.Omniglot(images, "train", n_way=20, k_shot=2, k_query=3, rotations=True)
    idx = dist.sample_indices(3, torch.Generator().manual_seed(1))
    batch = dist.episodes(idx)
    chars, turns = dist.class_source(idx.classes)
    for t in range(3):
        assert len(set(idx.classes[t].tolist())) == 20
        for j in range(20):
            support, query = idx.support[t, j].tolist(), idx.query[t, j].tolist()
            assert not set(support) & set(query) and len(set(support + query)) == 5
            source = images.images[int(chars[t, j])] / np.float32(255.0)  # (drawers, H, W)
            expect = np.rot90(source, int(turns[t, j]), axes=(1, 2))
            np.testing.assert_array_equal(batch.xs[t, batch.ys[t] == j, 0].numpy(), expect[support])
            np.testing.assert_array_equal(batch.xq[t, batch.yq[t] == j, 0].numpy(), expect[query])


def test_labels_are_permuted_per_episode(images):
    dist = og.Omniglot(images, "test", n_way=20, k_shot=1, k_query=1)
    idx = dist.sample_indices(200, torch.Generator().manual_seed(2))
    labels_of = defaultdict(set)
    for t in range(200):
        for j, c in enumerate(idx.classes[t].tolist()):
            labels_of[c].add(j)
    # Each class is drawn about 68 times; a fixed class->label map would give one label each.
    assert all(len(labels) >= 10 for labels in labels_of.values())


def test_same_seed_same_episode(images):
    dist = og.Omniglot(images, "train", n_way=5, k_shot=1, k_query=2, rotations=True)
    a, b, c = (dist.sample(3, torch.Generator().manual_seed(s)) for s in (7, 7, 8))
    for x, y in zip((a.xs, a.ys, a.xq, a.yq), (b.xs, b.ys, b.xq, b.yq)):
        assert torch.equal(x, y)
    assert not torch.equal(a.xs, c.xs)


def test_rotations_are_new_classes(images):
    plain = og.Omniglot(images, "train", n_way=5)
    rotated = og.Omniglot(images, "train", n_way=5, rotations=True)
    n = plain.n_classes
    assert rotated.n_classes == 4 * n
    first, second = torch.zeros(1, 4, 1, dtype=torch.long), torch.ones(1, 4, 1, dtype=torch.long)
    for c in (0, n - 1):
        classes = torch.tensor([[c, c + n, c + 2 * n, c + 3 * n]])
        xs = (
            rotated.episodes(EpisodeIndices(classes, first, second)).xs[0, :, 0].numpy()
        )  # (4, H, W)
        upright = plain.episodes(EpisodeIndices(classes[:, :1], first[:, :1], second[:, :1]))
        np.testing.assert_array_equal(xs[0], upright.xs[0, 0, 0].numpy())
        for r in (1, 2, 3):
            np.testing.assert_array_equal(xs[r], np.rot90(xs[0], r))
        assert not np.array_equal(xs[1], xs[0])


# --- Lake et al. 2015 one-shot runs ---------------------------------------------------------------


def test_lake_runs_parse(runs):
    archive = zipfile.ZipFile(SHARED / "all_runs.zip")
    assert len(runs) == 20
    for number, run in enumerate(runs, start=1):
        assert run.train_x.shape == run.test_x.shape == (20, 1, 28, 28)
        assert run.train_x.dtype == run.test_x.dtype == torch.float32
        assert run.train_y.tolist() == list(range(20))
        assert sorted(run.test_y.tolist()) == list(range(20))  # each class is asked once
        text = archive.read(f"run{number:02d}/class_labels.txt").decode()
        expect = {
            int(i): int(c) - 1 for i, c in re.findall(r"item(\d+)\.png \S+class(\d+)\.png", text)
        }
        assert run.test_y.tolist() == [expect[i] for i in range(1, 21)]


def test_pixel_nearest_neighbour_beats_chance_on_lake_runs(runs):
    """Independent numpy 1-NN; Koch et al. 2015 report 21.7% accuracy (78.3% error) for it."""
    wrong = 0
    for run in runs:
        train, test = run.train_x.numpy().reshape(20, -1), run.test_x.numpy().reshape(20, -1)
        dist = ((test[:, None, :] - train[None, :, :]) ** 2).sum(-1)  # (test, train)
        wrong += int((dist.argmin(1) != run.test_y.numpy()).sum())

    def nearest(train_x, train_y, test_x):
        return train_y[torch.cdist(test_x.flatten(1), train_x.flatten(1)).argmin(1)]

    error = og.lake_error_rate(nearest, runs)
    assert error == wrong / 400
    assert error < 0.85  # chance is 19/20 = 0.95
    always_first = og.lake_error_rate(
        lambda tx, ty, qx: torch.zeros(len(qx), dtype=torch.long), runs
    )
    assert always_first == 19 / 20  # each class is asked once per run


def test_lake_runs_error_adapts_then_predicts(runs):
    """A learner whose adaptation memorises the support set and whose logits are negative
    pixel distances is 1-NN, so it must score exactly the nearest-neighbour error."""

    class Memorise:
        def adapt(self, meta, xs, ys, steps):
            assert steps == 3 and torch.equal(ys, torch.arange(20))
            return {"train": xs}

        def forward(self, params, x):
            return -torch.cdist(x.flatten(1), params["train"].flatten(1))

    cfg = SimpleNamespace(
        meta=SimpleNamespace(eval_inner_steps=3), data=SimpleNamespace(data_dir=str(SHARED))
    )

    def nearest(train_x, train_y, test_x):
        return train_y[torch.cdist(test_x.flatten(1), train_x.flatten(1)).argmin(1)]

    assert og.lake_runs_error(Memorise(), {}, cfg) == og.lake_error_rate(nearest, runs)


# --- download -------------------------------------------------------------------------------------


class FakeResponse(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def test_download_network_failure_is_one_clear_error(tmp_path, monkeypatch):
    def refuse(url, timeout):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(og.urllib.request, "urlopen", refuse)
    with pytest.raises(
        FedmetaError, match=r"download of https://\S+/images_background\.zip failed: no route"
    ):
        og.download_omniglot(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_download_writes_only_valid_zips(tmp_path, monkeypatch):
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as z:
        z.writestr("images_evaluation/A/character01/0001_01.png", b"x")
    urls = []

    def serve(url, timeout):
        urls.append(url)
        return FakeResponse(
            payload.getvalue() if "evaluation" in url else b"<html>rate limited</html>"
        )

    monkeypatch.setattr(og.urllib.request, "urlopen", serve)
    assert og.download_omniglot(tmp_path, ("images_evaluation",)) == [
        tmp_path / "images_evaluation.zip"
    ]
    assert zipfile.is_zipfile(tmp_path / "images_evaluation.zip")
    assert urls == [f"{og.OFFICIAL_URL}/images_evaluation.zip"]
    with pytest.raises(FedmetaError, match="not a zip"):
        og.download_omniglot(tmp_path, ("images_evaluation", "all_runs"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images_evaluation.zip"]
    assert (
        urls[-1] == f"{og.OFFICIAL_URL}/one-shot-classification/all_runs.zip"
    )  # valid zip not refetched
    with pytest.raises(DataError) as err:
        og.download_omniglot(tmp_path, ("images_training",))
    assert err.value.field == "parts"


def test_federated_omniglot_refuses_more_clients_than_owners(images):
    """Clients are (alphabet, drawer group) owners: asking for more is an error, not a cap."""
    from fedmeta.config import Config
    from fedmeta.data.federated import make_federated

    raw = {"data": {"name": "omniglot", "data_dir": str(SHARED), "k_shot": 1, "k_query": 1},
           "federated": {"n_clients": 10_000, "held_out_clients": 0, "clients_per_round": 2,
                         "partition": {"drawers_per_client": 5}}}
    with pytest.raises(FedmetaError) as err:
        make_federated(Config.model_validate(raw), torch.Generator().manual_seed(0))
    assert err.value.field == "federated.n_clients" and "at most" in str(err.value)
