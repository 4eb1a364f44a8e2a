"""What a data file declares is checked before it is believed: sizes against the format (a
small file must not make us allocate gigabytes), labels as integer class indices."""

from __future__ import annotations

import gzip
import io
import tarfile

import h5py
import numpy as np
import pytest

from distnn.data import CorruptFileError, get_dataset
from distnn.data import idx as idx_module
from distnn.data.cifar import MEMBER_BYTES, load_cifar10
from distnn.data.hdf5 import H5Dataset
from distnn.data.idx import encode_idx

from .cifar_fixture import write_tarball
from .test_corrupt import write_pair


def declared_member_archive(path, member: str, declared: int):
    """A .tar.gz whose `member` header declares `declared` bytes; only 1 KiB follows."""
    info = tarfile.TarInfo(f"cifar-10-batches-py/{member}")
    info.size = declared
    with gzip.open(path, "wb", compresslevel=1) as gz:
        gz.write(info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 1024)
    return path


@pytest.mark.parametrize("member", ["data_batch_1", "test_batch", "batches.meta"])
def test_cifar_member_declaring_more_than_its_format_holds(tmp_path, member):
    archive = declared_member_archive(tmp_path / "a.tar.gz", member, 1 << 30)
    with pytest.raises(CorruptFileError) as info:
        load_cifar10(archive, "test")
    assert info.value.check == "member size"
    assert f"declares {1 << 30} bytes, expected at most {MEMBER_BYTES[member]}" in str(info.value)


def test_cifar_archive_of_too_many_members(tmp_path):
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(100):
            tar.addfile(tarfile.TarInfo(f"junk/{i}"), io.BytesIO(b""))
    with pytest.raises(CorruptFileError, match="archive layout.*more than 64 members"):
        load_cifar10(archive, "test")


def test_cifar_canonical_sizes_fit_the_limits(tmp_path):
    write_tarball(tmp_path / "a.tar.gz")  # small batches: well under; canonical: 31035704
    assert min(MEMBER_BYTES[m] for m in ("data_batch_1", "test_batch")) > 31035704
    assert len(load_cifar10(tmp_path / "a.tar.gz", "test")[1]) == 5


def test_idx_gzip_that_decompresses_past_what_the_samples_take(tmp_path, monkeypatch):
    monkeypatch.setattr(idx_module, "MAX_SAMPLES", 100)
    write_pair(tmp_path, n=101)  # well-formed, but more than MAX_SAMPLES images
    with pytest.raises(CorruptFileError) as info:
        get_dataset("mnist", "test", tmp_path, verify=False)
    assert info.value.check == "gzip size" and "more than 78416 bytes" in str(info.value)


def write_h5(path, labels, n=None, class_names=None, images=None):
    n = len(labels) if n is None else n
    with h5py.File(path, "w") as f:
        f.attrs.update(format="distnn-images", version=1, name="toy", provenance="")
        if class_names is not False:
            f.attrs["class_names"] = class_names or [f"c{i}" for i in range(10)]
        if images is None:
            f.create_dataset("train/images", data=np.zeros((n, 4, 4, 1), np.uint8))
        else:
            f.create_dataset("train/images", **images)
        f.create_dataset("train/labels", data=labels)
    return path


@pytest.mark.parametrize("labels,message", [
    (np.array([0.0, 2.5, 1.0]), r"train/labels\[1\] is 2.5, expected an integer class index"),
    (np.array([0.0, np.nan]), r"train/labels\[1\] is nan, expected an integer"),
    (np.array([0.0, np.inf]), r"train/labels\[1\] is inf, expected an integer"),
    (np.array([3, -1], np.int64), r"label range .*train/labels\[1\] is -1, expected 0..9"),
    (np.array([3, 10], np.int8), r"label range .*train/labels\[1\] is 10, expected 0..9"),
])
def test_h5_labels_must_be_class_indices(tmp_path, labels, message):
    with pytest.raises(CorruptFileError, match=message):
        H5Dataset(write_h5(tmp_path / "d.h5", labels), "train")


def test_h5_integral_float_labels_are_accepted(tmp_path):
    with H5Dataset(write_h5(tmp_path / "d.h5", np.array([0.0, 9.0, 3.0])), "train") as ds:
        assert ds.labels.dtype == np.int64 and list(ds.labels) == [0, 9, 3]


def test_h5_declaring_more_than_it_stores(tmp_path):
    """Unwritten chunks read as zeros: a tiny file may declare a million samples."""
    images = {"shape": (10**6, 4, 4, 1), "dtype": np.uint8, "chunks": (1000, 4, 4, 1)}
    path = write_h5(tmp_path / "d.h5", np.zeros(10**6, np.int64), images=images)
    with pytest.raises(CorruptFileError, match=r"HDF5 storage.*train/images declares 16000000 "
                                               r"bytes and stores 0"):
        H5Dataset(path, "train")


@pytest.mark.parametrize("class_names", [None, "abc", np.array([1, 2])])
def test_h5_class_names_must_be_a_list_of_strings(tmp_path, class_names):
    path = write_h5(tmp_path / "d.h5", np.array([0]), class_names=False)
    if class_names is not None:
        with h5py.File(path, "a") as f:
            f.attrs["class_names"] = class_names
    with pytest.raises(CorruptFileError, match="attribute class_names is .*expected a non-empty "
                                               "list of strings"):
        H5Dataset(path, "train")


def test_idx_labels_are_integral_by_format(tmp_path):
    """An IDX file of another element type (0x0D float) fails the magic check: IDX labels are
    always uint8, so only their range needs checking."""
    raw = bytearray(encode_idx(np.zeros(7, np.uint8)))
    raw[2] = 0x0D
    write_pair(tmp_path, labels_raw=bytes(raw))
    with pytest.raises(CorruptFileError, match="IDX magic"):
        get_dataset("mnist", "test", tmp_path, verify=False)
