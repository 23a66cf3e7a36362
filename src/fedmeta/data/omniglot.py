"""Omniglot few-shot classification (Lake, Salakhutdinov & Tenenbaum, Science 2015).

Reads the official zips (`images_background`, `images_evaluation`, `images_background_small1/2`)
or their extracted folders, `<set>/<Alphabet>/characterNN/<id>_<drawer>.png`. Each 105x105
black-on-white drawing is resized to 28x28 with Lanczos antialiasing and inverted so strokes
are 1 and paper 0, as in Santoro et al. 2016 and Finn et al. 2017 (MAML). A character that
appears in several sets (Greek and Latin are in both small sets, with byte-identical files)
is kept once. Decoded arrays are cached as `.npz` keyed by the sources' sizes and mtimes.

`Omniglot` samples N-way K-shot episodes from alphabets held out by split, optionally with
90/180/270-degree rotations as new classes (Santoro et al. 2016). `load_lake_runs` and
`lake_error_rate` reproduce the paper's 20 within-alphabet 20-way one-shot runs.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from fedmeta.data.base import TaskBatch
from fedmeta.data.episodes import (
    EpisodeIndices,
    check_episode_shape,
    episode_indices,
    to_task_batch,
)
from fedmeta.errors import DataError, FedmetaError

SETS = (
    "images_background",
    "images_evaluation",
    "images_background_small1",
    "images_background_small2",
)
LAKE_RUNS = "all_runs"
DRAWERS = 20
SIDE = 28
OFFICIAL_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python"
_URL_PATHS = {**{s: f"{s}.zip" for s in SETS}, LAKE_RUNS: "one-shot-classification/all_runs.zip"}
_PREPROCESS = f"lanczos-{SIDE}-inverted-v1"  # part of the cache key


@dataclass(frozen=True)
class OmniglotImages:
    """Every character found, one row each; axis 1 index d is drawer d+1.

    images (chars, 20, 28, 28) uint8 with strokes 255: divide by 255 for [0, 1] with strokes 1,
    as episodes come out. alphabets[i], characters[i] and sets[i] name character i
    (e.g. "Greek", "character03", "images_background_small1").
    """

    images: np.ndarray
    alphabets: list[str]
    characters: list[str]
    sets: list[str]

    def alphabet_names(self) -> list[str]:
        return sorted(set(self.alphabets))


@dataclass(frozen=True)
class LakeRun:
    """One 20-way one-shot run: train_x, test_x (20, 1, 28, 28); train_y, test_y (20,) int64."""

    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor


# --- paths -------------------------------------------------------------------------------


def _has_omniglot(folder: Path) -> bool:
    names = (*SETS, LAKE_RUNS)
    return any((folder / f"{n}.zip").is_file() or (folder / n).is_dir() for n in names)


def resolve_data_dir(value: str | Path | None, field: str = "data.data_dir") -> Path:
    """The Omniglot folder: `value`, else $FEDMETA_DATA; it or its omniglot/ holds the data."""
    source = ""
    if value is None:
        value, source = os.environ.get("FEDMETA_DATA"), " (from FEDMETA_DATA)"
    if value is None or str(value) == "":
        raise DataError(field, value, "a folder holding Omniglot, or set FEDMETA_DATA")
    path = Path(value).expanduser()
    if not path.is_dir():
        raise DataError(field, str(value), f"an existing folder{source}")
    for candidate in (path, path / "omniglot"):
        if candidate.is_dir() and _has_omniglot(candidate):
            return candidate
    raise DataError(
        field,
        str(value),
        f"a folder{source} holding {', '.join(f'{n}.zip' for n in (*SETS, LAKE_RUNS))} "
        "or their extracted folders, itself or in its omniglot/ subfolder",
    )


# --- decoding and the cache --------------------------------------------------------------


def _preprocess(data: bytes | Path, name: str) -> np.ndarray:
    """One PNG → (28, 28) uint8 with strokes 255."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            small = img.convert("L").resize((SIDE, SIDE), Image.Resampling.LANCZOS)
    except (UnidentifiedImageError, OSError) as err:
        raise DataError("data.data_dir", name, f"a readable PNG ({err})") from err
    return 255 - np.asarray(small, dtype=np.uint8)


def _source(root: Path, name: str) -> Path | None:
    """The zip of a set if present, else its extracted folder, else None."""
    for candidate in (root / f"{name}.zip", root / name):
        if candidate.exists():
            return candidate
    return None


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError("data.data_dir", str(path), f"a readable zip archive ({err})") from err


def _read_zip(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except (zipfile.BadZipFile, OSError) as err:
        raise DataError(
            "data.data_dir", f"{archive.filename}:{name}", f"a readable entry ({err})"
        ) from err


def _pngs(source: Path, stack: ExitStack) -> Iterator[tuple[str, Callable[[], bytes | Path]]]:
    """(relative path, reader) for each PNG of a zip or folder; the zip closes with stack."""
    if source.is_dir():
        for path in sorted(source.rglob("*.png")):
            yield path.relative_to(source).as_posix(), (lambda p=path: p)
        return
    archive = stack.enter_context(_open_zip(source))
    for name in sorted(n for n in archive.namelist() if n.endswith(".png")):
        yield name, (lambda n=name: _read_zip(archive, n))


def _cache_key(sources: list[Path]) -> str:
    digest = hashlib.sha256(_PREPROCESS.encode())
    for source in sources:
        files = sorted(source.rglob("*.png")) if source.is_dir() else [source]
        for f in files:
            st = f.stat()
            digest.update(f"{f.resolve()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:20]


def default_cache_dir() -> Path:
    """$FEDMETA_CACHE, else ~/.cache/fedmeta."""
    env = os.environ.get("FEDMETA_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fedmeta"


def _decode(
    sources: list[tuple[str, Path]], stack: ExitStack
) -> tuple[np.ndarray, list[str], list[str], list[str]]:
    """Decode every character once; the first set holding an (alphabet, character) wins."""
    found: dict[tuple[str, str], tuple[str, dict[int, Callable[[], bytes | Path]]]] = {}
    for set_name, source in sources:
        seen_here: dict[tuple[str, str], dict[int, Callable[[], bytes | Path]]] = {}
        for rel, reader in _pngs(source, stack):
            parts = rel.split("/")
            match = re.fullmatch(r"\d+_(\d+)\.png", parts[-1])
            if len(parts) < 3 or match is None:
                continue
            seen_here.setdefault((parts[-3], parts[-2]), {})[int(match.group(1))] = reader
        for key, drawers in seen_here.items():
            found.setdefault(key, (set_name, drawers))
    if not found:
        raise DataError("data.data_dir", str(sources[0][1].parent), "Omniglot character PNGs")
    keys = sorted(found)
    images = np.empty((len(keys), DRAWERS, SIDE, SIDE), dtype=np.uint8)  # (chars, drawers, H, W)
    for i, key in enumerate(keys):
        drawers = found[key][1]
        if sorted(drawers) != list(range(1, DRAWERS + 1)):
            raise DataError(
                "data.data_dir",
                "/".join(key),
                f"drawings by drawers 1..{DRAWERS}, got {sorted(drawers)}",
            )
        for d in range(DRAWERS):
            images[i, d] = _preprocess(drawers[d + 1](), f"{'/'.join(key)} drawer {d + 1}")
    return images, [k[0] for k in keys], [k[1] for k in keys], [found[k][0] for k in keys]


def load_omniglot(
    data_dir: str | Path | None = None, *, cache: bool = True, cache_dir: Path | None = None
) -> OmniglotImages:
    """Every Omniglot character under `data_dir` (see `resolve_data_dir`), decoded or from cache."""
    root = resolve_data_dir(data_dir)
    sources = [(name, src) for name in SETS if (src := _source(root, name)) is not None]
    if not sources:
        raise DataError(
            "data.data_dir", str(root), f"at least one of {', '.join(SETS)} (zip or folder)"
        )
    key = _cache_key([s for _, s in sources])
    path = (cache_dir or default_cache_dir()) / f"omniglot-{key}.npz"
    cached = _read_cache(path) if cache else None
    if cached is None:
        with ExitStack() as stack:
            cached = _decode(sources, stack)
        if cache:
            _write_cache(path, *cached)
    pixels, alphabets, characters, sets = cached
    return OmniglotImages(pixels, alphabets, characters, sets)


def _read_cache(path: Path) -> tuple[np.ndarray, list[str], list[str], list[str]] | None:
    """The cached arrays, or None when absent or unreadable (then they are decoded again)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            pixels = z["images"]
            return pixels, *(z[k].tolist() for k in ("alphabets", "characters", "sets"))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def _write_cache(
    path: Path, pixels: np.ndarray, alphabets: list[str], characters: list[str], sets: list[str]
) -> None:
    """Atomic write; a cache that cannot be written only costs the next load its decoding."""
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".npz", delete=False) as f:
            tmp = Path(f.name)
            np.savez(
                f,
                images=pixels,
                alphabets=np.array(alphabets),
                characters=np.array(characters),
                sets=np.array(sets),
            )
        os.replace(tmp, path)
    except OSError:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


# --- the task distribution ---------------------------------------------------------------


def default_test_alphabets(images: OmniglotImages) -> list[str]:
    """The held-out alphabets: those of images_evaluation when images_background is also
    present (Lake et al.'s split), otherwise the last two of the sorted alphabet names."""
    present = set(images.sets)
    if {"images_background", "images_evaluation"} <= present:
        return sorted(
            {a for a, s in zip(images.alphabets, images.sets) if s == "images_evaluation"}
        )
    return images.alphabet_names()[-2:]


class Omniglot:
    """N-way K-shot episodes over the characters of one alphabet split.

    Class c is character `characters[c % n]` turned by 90*(c // n) degrees counterclockwise,
    n = len(characters); without rotations there are n classes, with them 4n.
    """

    kind = "classification"
    x_shape = (1, SIDE, SIDE)

    def __init__(
        self,
        images: OmniglotImages,
        split: str = "train",
        n_way: int = 5,
        k_shot: int = 1,
        k_query: int = 15,
        rotations: bool = False,
        test_alphabets: list[str] | None = None,
    ):
        if split not in ("train", "test"):
            raise DataError("data.split", split, "'train' or 'test'")
        names = images.alphabet_names()
        held_out = (
            default_test_alphabets(images) if test_alphabets is None else list(test_alphabets)
        )
        for alphabet in held_out:
            if alphabet not in names:
                raise DataError("data.test_alphabets", alphabet, f"one of {', '.join(names)}")
        self.alphabets = sorted(a for a in names if (a in held_out) == (split == "test"))
        keep = set(self.alphabets)
        self.characters = torch.tensor(
            [i for i, a in enumerate(images.alphabets) if a in keep], dtype=torch.long
        )
        self.rotations = rotations
        self.n_classes = len(self.characters) * (4 if rotations else 1)
        drawers = images.images.shape[1]  # 20, or fewer for one client's group of drawers
        check_episode_shape(n_way, k_shot, k_query, self.n_classes, drawers, split)
        self.n_way, self.k_shot, self.k_query = n_way, k_shot, k_query
        self.n_outputs = n_way
        base = images.images[self.characters.numpy()]  # (n, drawers, H, W) uint8
        turns = range(4) if rotations else range(1)
        rotated = [np.rot90(base, r, axes=(-2, -1)) for r in turns]
        self._pool = np.concatenate(rotated)  # (classes, drawers, H, W)

    def class_source(self, classes: Tensor) -> tuple[Tensor, Tensor]:
        """Character index into `OmniglotImages` and quarter turns of each class id."""
        n = len(self.characters)
        return self.characters[classes % n], classes // n

    def sample_indices(self, n_tasks: int, generator: torch.Generator) -> EpisodeIndices:
        sizes = torch.full((self.n_classes,), self._pool.shape[1])
        return episode_indices(sizes, n_tasks, self.n_way, self.k_shot, self.k_query, generator)

    def episodes(self, idx: EpisodeIndices) -> TaskBatch:
        """Gather the pixels of sampled episodes (in numpy, see `to_task_batch`); the
        support/query positions are drawers."""
        drawers = torch.cat([idx.support, idx.query], dim=-1).numpy()  # (tasks, n_way, k)
        x = self._pool[idx.classes.numpy()[..., None], drawers]  # (tasks, n_way, k, H, W) uint8
        x = x[:, :, :, None].astype(np.float32) / np.float32(255.0)  # (tasks, n_way, k, 1, H, W)
        return to_task_batch(x, self.k_shot)

    def sample(self, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        return self.episodes(self.sample_indices(n_tasks, generator))

    @classmethod
    def from_path(
        cls, data_dir: str | Path | None, split: str = "train", *, cache: bool = True, **kwargs: Any
    ) -> Omniglot:
        """`Omniglot(load_omniglot(data_dir), split, **kwargs)`, data_dir as `resolve_data_dir`."""
        return cls(load_omniglot(data_dir, cache=cache), split, **kwargs)


# --- Lake et al. 2015 one-shot runs ------------------------------------------------------


def load_lake_runs(data_dir: str | Path | None = None) -> list[LakeRun]:
    """The 20 runs of `all_runs.zip` (or `all_runs/`), labels from each `class_labels.txt`."""
    root = resolve_data_dir(data_dir)
    source = _source(root, LAKE_RUNS)
    if source is None:
        raise DataError(
            "data.data_dir", str(root), f"{LAKE_RUNS}.zip or {LAKE_RUNS}/ for the one-shot runs"
        )
    with ExitStack() as stack:
        if source.is_dir():
            read: Callable[[str], bytes] = lambda rel: (source / rel).read_bytes()
            names = [p.relative_to(source).as_posix() for p in source.rglob("class_labels.txt")]
        else:
            archive = stack.enter_context(_open_zip(source))
            read = lambda rel: _read_zip(archive, rel)
            names = [n for n in archive.namelist() if n.endswith("class_labels.txt")]
        return [_lake_run(read, labels_file, source) for labels_file in sorted(names)]


def _lake_run(read: Callable[[str], bytes], labels_file: str, source: Path) -> LakeRun:
    """One run: `runNN/test/itemMM.png runNN/training/classKK.png` means item MM is class KK."""
    run = labels_file.rsplit("/", 1)[0]
    pairs = re.findall(
        r"test/item(\d+)\.png\s+\S*training/class(\d+)\.png", read(labels_file).decode()
    )
    one_each = list(range(1, 21))
    if sorted(int(i) for i, _ in pairs) != one_each or not {int(c) for _, c in pairs} <= set(
        one_each
    ):
        raise DataError(
            "data.data_dir", f"{source}:{labels_file}", "one line 'itemMM classKK' per item, 01..20"
        )
    pairs.sort(key=lambda p: int(p[0]))

    def stack(files: list[str]) -> Tensor:  # (20, 1, H, W)
        return torch.from_numpy(
            np.stack([_preprocess(read(f), f) for f in files])[:, None] / np.float32(255.0)
        )

    return LakeRun(
        train_x=stack([f"{run}/training/class{c:02d}.png" for c in range(1, 21)]),
        train_y=torch.arange(20),
        test_x=stack([f"{run}/test/item{int(i):02d}.png" for i, _ in pairs]),
        test_y=torch.tensor([int(c) - 1 for _, c in pairs]),
    )


def lake_error_rate(
    predict_fn: Callable[[Tensor, Tensor, Tensor], Tensor], runs: list[LakeRun]
) -> float:
    """Fraction of the runs' test images misclassified by predict_fn(train_x, train_y, test_x)."""
    wrong = 0
    for run in runs:
        predicted = torch.as_tensor(predict_fn(run.train_x, run.train_y, run.test_x))
        wrong += int((predicted != run.test_y).sum())
    return wrong / sum(len(run.test_y) for run in runs)


def lake_runs_error(learner: Any, meta: dict[str, Tensor], cfg: Any) -> float:
    """Lake error rate of a 20-way meta-learner: adapt on each run's 20 examples
    (`cfg.meta.eval_inner_steps` steps), predict the arg-max class of each test image."""

    device = next((v.device for v in meta.values()), torch.device("cpu"))  # the run's (the images are on the CPU)

    def predict(train_x: Tensor, train_y: Tensor, test_x: Tensor) -> Tensor:
        params = learner.adapt(meta, train_x.to(device), train_y.to(device), cfg.meta.eval_inner_steps)
        return learner.forward(params, test_x.to(device)).argmax(-1).cpu()

    return lake_error_rate(predict, load_lake_runs(cfg.data.data_dir))


# --- download ----------------------------------------------------------------------------


def download_omniglot(
    dest: Path,
    parts: tuple[str, ...] = ("images_background", "images_evaluation"),
    *,
    base_url: str = OFFICIAL_URL,
    timeout: float = 60.0,
) -> list[Path]:
    """Fetch `<part>.zip` from Lake's repository into dest (skipping valid ones already there)."""
    for part in parts:
        if part not in _URL_PATHS:
            raise DataError("parts", part, f"one of {', '.join(_URL_PATHS)}")
    dest = Path(dest).expanduser()
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for part in parts:
        target = dest / f"{part}.zip"
        if not (target.is_file() and zipfile.is_zipfile(target)):
            _fetch(f"{base_url}/{_URL_PATHS[part]}", target, timeout)
        written.append(target)
    return written


def _fetch(url: str, target: Path, timeout: float) -> None:
    """Download to a temporary file beside target, check it is a zip, then rename."""
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".part", delete=False) as tmp:
        tmp_path = Path(tmp.name)
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                while chunk := response.read(1 << 20):
                    tmp.write(chunk)
        except (urllib.error.URLError, OSError) as err:
            tmp.close()
            tmp_path.unlink(missing_ok=True)
            raise FedmetaError(f"download of {url} failed: {getattr(err, 'reason', err)}") from err
    if not zipfile.is_zipfile(tmp_path):
        tmp_path.unlink(missing_ok=True)
        raise FedmetaError(f"download of {url} failed: the response is not a zip archive")
    os.replace(tmp_path, target)
