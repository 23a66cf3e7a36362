"""`fedmeta data info` and `fedmeta data download` through the real entry point."""

from __future__ import annotations

import urllib.error
import zipfile
from pathlib import Path

import pytest

from fedmeta.cli import main
from fedmeta.data import omniglot as og

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "omniglot"


@pytest.mark.skipif(not SHARED.is_dir(), reason=f"Omniglot subset not found at {SHARED}")
def test_info_lists_alphabets_and_the_default_split(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FEDMETA_CACHE", str(tmp_path))
    assert main(["data", "info", "--data-dir", str(SHARED.parent)]) == 0
    out = capsys.readouterr().out
    names = set()
    for name in ("images_background_small1.zip", "images_background_small2.zip"):
        names |= {
            m.split("/")[1] for m in zipfile.ZipFile(SHARED / name).namelist() if m.endswith(".png")
        }
    for alphabet in names:
        assert alphabet in out
    assert "test 59 (Sanskrit, Tagalog)" in out  # 42 Sanskrit + 17 Tagalog characters


def test_info_without_data_is_bad_input(capsys, tmp_path):
    assert main(["data", "info", "--data-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--data-dir" in err[0]


def test_download_failure_is_one_line(capsys, monkeypatch, tmp_path):
    def refuse(url, timeout):
        raise urllib.error.URLError("network unreachable")

    monkeypatch.setattr(og.urllib.request, "urlopen", refuse)
    assert main(["data", "download", "omniglot", "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "network unreachable" in err[0]
    assert list((tmp_path / "omniglot").iterdir()) == []
    assert main(["data", "download", "cifar", "--data-dir", str(tmp_path)]) == 2
