"""The distnn HDF5 format: layout, chunking, lazy reads, bad files."""

from __future__ import annotations

from itertools import pairwise

import h5py
import numpy as np
import pytest

from distnn.data import CorruptFileError, DataError, H5Dataset, get_dataset, write_h5
from distnn.data.hdf5 import chunk_samples

from .test_transforms import image_set


@pytest.fixture
def toy_h5(tmp_path):
    train, test = image_set(300, (28, 28, 1), seed=1), image_set(40, (28, 28, 1), seed=2)
    return write_h5(tmp_path / "toy.h5", {"train": train, "test": test}, "toy", "made here"), train


def test_layout_attributes_and_chunks(toy_h5):
    path, train = toy_h5
    with h5py.File(path, "r") as f:
        assert f.attrs["format"] == "distnn-images" and f.attrs["version"] == 1
        assert list(f.attrs["class_names"]) == list(train.class_names)
        images = f["train/images"]
        assert images.dtype == np.uint8 and images.shape == (300, 28, 28, 1)
        assert images.chunks == (chunk_samples((28, 28, 1)), 28, 28, 1) == (20, 28, 28, 1)
        assert images.compression is None and f["train/labels"].dtype == np.int64
    assert chunk_samples((32, 32, 3)) == 5 and chunk_samples((512, 512, 3)) == 1


class Recorder:
    """Stands in for the h5py dataset and counts the rows each read asks for."""

    def __init__(self, inner):
        self.inner, self.rows = inner, 0
        self.shape = inner.shape

    def __getitem__(self, key):
        out = self.inner[key]
        self.rows += 1 if out.ndim == 3 else out.shape[0]
        return out


def test_reads_only_the_requested_samples(toy_h5):
    path, train = toy_h5
    with H5Dataset(path, "train") as lazy:
        assert not hasattr(lazy, "images")
        lazy._images = Recorder(lazy._images)
        idx = np.array([250, 3, 4, 5, 99, 3])
        np.testing.assert_array_equal(lazy.read(idx), train.read(idx))
        assert lazy._images.rows == len(idx)  # 3 is read twice, nothing else is read


class SliceRecorder:
    """Stands in for the h5py dataset and records the key of each read."""

    def __init__(self, inner):
        self.inner, self.keys = inner, []
        self.shape = inner.shape

    def __getitem__(self, key):
        self.keys.append(key)
        return self.inner[key]


def test_a_batch_of_128_is_read_as_plain_slices_in_file_order(tmp_path):
    """What keeps a random batch cheap, checked by counting rather than timing (the figures are
    in benchmarks/hdf5_read.py): one plain slice per run of consecutive indices, in increasing
    order, each sample read once; never an h5py point (fancy) selection."""
    ds = image_set(5000, (32, 32, 3))
    path = write_h5(tmp_path / "cifar-like.h5", {"train": ds}, "toy", "")
    rng = np.random.default_rng(0)
    batches = [rng.choice(5000, 128, replace=False) for _ in range(10)]
    batches.append(np.arange(1000, 1128))  # a contiguous block, as evaluation reads
    with H5Dataset(path, "train") as lazy:
        lazy._images = rec = SliceRecorder(lazy._images)
        for idx in batches:
            rec.keys.clear()
            np.testing.assert_array_equal(lazy.read(idx), ds.read(idx))
            assert all(isinstance(k, slice) and k.step is None for k in rec.keys), rec.keys
            assert all(a.stop < b.start for a, b in pairwise(rec.keys)), rec.keys
            runs = 1 + np.count_nonzero(np.diff(np.sort(idx)) != 1)
            assert len(rec.keys) == runs
            assert sum(k.stop - k.start for k in rec.keys) == 128
        assert len(rec.keys) == 1  # the contiguous block: one read


def test_bad_files_and_splits(tmp_path, toy_h5):
    path, _ = toy_h5
    with pytest.raises(DataError, match="no split 'valid'.*'test', 'train'"):
        get_dataset(str(path), "valid")
    with pytest.raises(DataError, match="no such HDF5 file"):
        H5Dataset(tmp_path / "absent.h5", "train")
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(CorruptFileError, match="HDF5 format"):
        H5Dataset(other, "train")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not hdf5 at all")
    with pytest.raises(CorruptFileError, match="cannot open"):
        H5Dataset(junk, "train")
    with h5py.File(path, "r+") as f:
        f["test/labels"][0] = 12
    with pytest.raises(CorruptFileError, match="label range"):
        H5Dataset(path, "test")


def test_write_is_atomic(tmp_path, monkeypatch):
    ds = image_set(10)

    class Boom(RuntimeError):
        pass

    def explode(indices):
        raise Boom("source failed mid-conversion")

    monkeypatch.setattr(ds, "read", explode)
    with pytest.raises(Boom):
        write_h5(tmp_path / "out.h5", {"train": ds}, "toy", "")
    assert list(tmp_path.iterdir()) == []
