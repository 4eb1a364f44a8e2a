"""The bundled mini MNIST: small, balanced, documented, reproducible from the originals."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np

from distnn.data import get_dataset
from distnn.data.catalog import MINI_DIR, MINI_MNIST
from distnn.data.make_mini import make_mini

from .conftest import SHARED_DATA, needs_shared


def test_small_balanced_and_verified():
    total = sum(p.stat().st_size for p in MINI_DIR.iterdir())
    assert total <= 2_000_000
    train, test = get_dataset("mini_mnist", "train"), get_dataset("mini_mnist", "test")
    assert np.bincount(train.labels).tolist() == [800] * 10
    assert np.bincount(test.labels).tolist() == [200] * 10
    assert train.image_shape == (28, 28, 1) and "md5 verified" in train.provenance


def test_readme_documents_files_source_and_citation():
    text = (MINI_DIR / "README.md").read_text()
    for f in MINI_MNIST.files:
        assert f.md5 in text and str(f.size) in text
    for source_md5 in ("f68b3c2dcbeaaa9fbdd348bbdeb94873", "ec29112dd5afa0611ce80d1b7f02629c"):
        assert source_md5 in text
    assert "20240611" in text and "Proceedings of the IEEE" in text


@needs_shared
def test_regenerating_reproduces_the_bundled_bytes(tmp_path, mnist_train, mnist_test):
    written = make_mini(SHARED_DATA, tmp_path)
    assert written == {f.name: f.md5 for f in MINI_MNIST.files}
    # Every mini image is an MNIST image of the same split with the same label.
    mini = get_dataset("mini_mnist", "test")
    lookup = {mnist_test.read(np.array([i]))[0].tobytes(): mnist_test.labels[i]
              for i in range(len(mnist_test))}
    for i in range(0, len(mini), 97):
        assert lookup[mini.read(np.array([i]))[0].tobytes()] == mini.labels[i]


def test_quickstart_reaches_95_percent(tmp_path):
    """The quickstart on mini_mnist reaches 95 % test accuracy. How long it takes is a figure
    for benchmarks/, not a pass criterion here; the subprocess timeout is only a hang guard."""
    env = {**os.environ, "DISTNN_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "distnn.cli", "train", "--backend", "local",
                           "--set", "train.threads=1", "--run-dir", str(tmp_path / "run")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", done.stdout).group(1))
    assert accuracy >= 0.95, accuracy
