"""Data directory resolution and downloads (from file:// mirrors: tests never use the network)."""

from __future__ import annotations

import dataclasses
import io
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from distnn.data import CorruptFileError, DatasetNotFoundError, catalog, get_dataset
from distnn.data.fetch import download_file, ensure_files

from .conftest import SHARED_DATA, needs_shared


def test_data_dir_resolution_order(monkeypatch, tmp_path):
    monkeypatch.setenv("DISTNN_DATA_DIR", str(tmp_path / "env"))
    assert catalog.resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert catalog.resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("DISTNN_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert catalog.resolve_data_dir() == tmp_path / "cache" / "distnn"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert catalog.resolve_data_dir() == Path.home() / ".cache" / "distnn"
    assert catalog.dataset_folder(catalog.CIFAR10, tmp_path) == tmp_path / "cifar10"
    assert catalog.dataset_folder(catalog.MINI_MNIST, tmp_path) == catalog.MINI_DIR


def with_mirror(monkeypatch, name: str, url: str):
    spec = dataclasses.replace(catalog.SPECS[name], mirrors=(url,))
    monkeypatch.setitem(catalog.SPECS, name, spec)
    return spec


@needs_shared
def test_missing_files_are_downloaded_md5_checked(monkeypatch, tmp_path):
    with_mirror(monkeypatch, "mnist", (SHARED_DATA / "mnist").as_uri() + "/")
    ds = get_dataset("mnist", "test", tmp_path, download=True)
    assert len(ds) == 10000
    got = sorted(p.name for p in (tmp_path / "mnist").iterdir())
    assert got == ["t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]  # no temp files


def test_offline_env_disables_downloads(monkeypatch, tmp_path):
    with_mirror(monkeypatch, "mnist", "file:///nonexistent/")
    with pytest.raises(DatasetNotFoundError, match="downloads are disabled"):
        get_dataset("mnist", "test", tmp_path)


def test_failed_download_is_one_error_listing_files_and_reasons(monkeypatch, tmp_path):
    with_mirror(monkeypatch, "mnist", "file:///nonexistent/")
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("mnist", "test", tmp_path, download=True)
    msg = str(info.value)
    assert "the download failed" in msg and "file:///nonexistent/t10k-images-idx3-ubyte.gz" in msg
    assert str(tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz") in msg
    assert not (tmp_path / "mnist").exists() or not any((tmp_path / "mnist").iterdir())


def test_download_with_wrong_md5_leaves_nothing(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"not the file you are looking for")
    dest = tmp_path / "out" / "file.gz"
    with pytest.raises(CorruptFileError, match="md5"):
        download_file(src.as_uri(), dest, md5="0" * 32, quiet=True)
    assert not dest.exists() and list(dest.parent.iterdir()) == []


def test_interrupted_download_leaves_nothing(monkeypatch, tmp_path):
    class Broken(io.BytesIO):
        headers = {"Content-Length": "100"}

        def read(self, size=-1):
            if self.tell() >= 10:
                raise ConnectionResetError("connection reset mid-file")
            return super().read(10)

    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout=None: Broken(b"x" * 100))
    dest = tmp_path / "file.gz"
    with pytest.raises(ConnectionResetError):
        download_file("https://example.invalid/file.gz", dest, md5=None, quiet=True)
    assert list(tmp_path.iterdir()) == []


def test_ensure_files_returns_the_folder_when_present(tmp_path):
    folder = ensure_files(catalog.MINI_MNIST, tmp_path)
    assert folder == catalog.MINI_DIR
    assert np.bincount(get_dataset("mini_mnist", "test").labels).tolist() == [200] * 10
