"""Shared fixtures: the real data folder beside the checkout, and no network, ever."""

from __future__ import annotations

import os
import urllib.request
from pathlib import Path

import pytest

from distnn.data import get_dataset


def _find_shared_data() -> Path:
    """$DISTNN_DATA_DIR if it holds mnist/, else ../shared/data beside the repo checkout."""
    env = os.environ.get("DISTNN_DATA_DIR")
    if env and (Path(env) / "mnist").is_dir():
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


SHARED_DATA = _find_shared_data()
HAVE_SHARED = (SHARED_DATA / "mnist").is_dir() and (SHARED_DATA / "fashion-mnist").is_dir()
needs_shared = pytest.mark.skipif(not HAVE_SHARED, reason=f"no MNIST / Fashion-MNIST originals "
                                                          f"in {SHARED_DATA}")
_real_urlopen = urllib.request.urlopen


def _local_only_urlopen(url, *args, **kwargs):
    """Tests may 'download' from file:// mirrors; any other scheme is a test bug."""
    target = url if isinstance(url, str) else url.full_url
    if not target.startswith("file:"):
        raise AssertionError(f"a test tried to reach the network: {target}")
    return _real_urlopen(url, *args, **kwargs)


@pytest.fixture(autouse=True)
def offline_env(monkeypatch):
    """Every test: data dir = the shared originals, downloads off, urlopen local-only."""
    monkeypatch.setenv("DISTNN_DATA_DIR", str(SHARED_DATA))
    monkeypatch.setenv("DISTNN_OFFLINE", "1")
    monkeypatch.setattr(urllib.request, "urlopen", _local_only_urlopen)


@pytest.fixture(scope="session")
def mnist_train():
    if not HAVE_SHARED:
        pytest.skip(f"no MNIST originals in {SHARED_DATA}")
    return get_dataset("mnist", "train", SHARED_DATA, download=False)


@pytest.fixture(scope="session")
def mnist_test():
    if not HAVE_SHARED:
        pytest.skip(f"no MNIST originals in {SHARED_DATA}")
    return get_dataset("mnist", "test", SHARED_DATA, download=False)
