"""Corrupt, truncated and missing files: one clear error naming the file and the failed check."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest

from distnn.data import CorruptFileError, DatasetNotFoundError, get_dataset
from distnn.data.idx import encode_idx

from .conftest import SHARED_DATA, needs_shared

IMAGES, LABELS = "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"


def write_pair(folder, n=7, labels=None, images_raw=None, labels_raw=None):
    """A small, well-formed MNIST-like test split in folder/mnist (raw bytes may override)."""
    mnist = folder / "mnist"
    mnist.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10 if labels is None else np.asarray(labels)
    raw_i = encode_idx(images) if images_raw is None else images_raw
    raw_l = encode_idx(labels.astype(np.uint8)) if labels_raw is None else labels_raw
    (mnist / IMAGES).write_bytes(gzip.compress(raw_i))
    (mnist / LABELS).write_bytes(gzip.compress(raw_l))
    return mnist, images, labels


def expect_error(tmp_path, file, check, verify=False):
    with pytest.raises(CorruptFileError) as info:
        get_dataset("mnist", "test", tmp_path, verify=verify)
    err = info.value
    assert err.check == check and err.path == str(tmp_path / "mnist" / file)
    assert str(tmp_path / "mnist" / file) in str(err) and check in str(err)
    return err


def test_well_formed_non_canonical_files_read_with_verify_off(tmp_path):
    _, images, labels = write_pair(tmp_path)
    ds = get_dataset("mnist", "test", tmp_path, verify=False)
    np.testing.assert_array_equal(ds.read(np.arange(7))[..., 0], images)
    np.testing.assert_array_equal(ds.labels, labels)
    assert "NOT verified" in ds.provenance


def test_bad_md5(tmp_path):
    write_pair(tmp_path)
    err = expect_error(tmp_path, IMAGES, "md5", verify=True)
    assert "9fb629c4189551a2d022fa330f9573f3" in str(err)  # the expected md5 is named


@needs_shared
def test_bad_md5_of_one_flipped_byte_in_a_canonical_copy(tmp_path):
    shutil.copytree(SHARED_DATA / "mnist", tmp_path / "mnist")
    path = tmp_path / "mnist" / LABELS
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    expect_error(tmp_path, LABELS, "md5", verify=True)


def test_bad_magic(tmp_path):
    raw = bytearray(encode_idx(np.zeros((3, 28, 28), np.uint8)))
    raw[3] = 1  # claims one dimension: magic 2049 in an images file
    write_pair(tmp_path, images_raw=bytes(raw))
    err = expect_error(tmp_path, IMAGES, "IDX magic")
    assert "2049" in str(err) and "2051" in str(err)


def test_short_payload(tmp_path):
    raw = encode_idx(np.zeros((7, 28, 28), np.uint8))[:-100]
    write_pair(tmp_path, images_raw=raw)
    expect_error(tmp_path, IMAGES, "IDX payload length")


def test_long_payload(tmp_path):
    write_pair(tmp_path, labels_raw=encode_idx(np.zeros(7, np.uint8)) + b"\0")
    expect_error(tmp_path, LABELS, "IDX payload length")


def test_truncated_header(tmp_path):
    write_pair(tmp_path, labels_raw=b"\0\0\x08")
    expect_error(tmp_path, LABELS, "IDX header")


def test_label_out_of_range(tmp_path):
    write_pair(tmp_path, labels=[0, 1, 2, 10, 4, 5, 6])
    err = expect_error(tmp_path, LABELS, "label range")
    assert "label 10 at index 3" in str(err)


def test_wrong_image_size_and_count_mismatch(tmp_path):
    write_pair(tmp_path, images_raw=encode_idx(np.zeros((7, 27, 28), np.uint8)))
    expect_error(tmp_path, IMAGES, "IDX dims")
    write_pair(tmp_path, labels_raw=encode_idx(np.zeros(6, np.uint8)))
    expect_error(tmp_path, LABELS, "IDX dims")


def test_truncated_gzip(tmp_path):
    mnist, _, _ = write_pair(tmp_path)
    data = (mnist / IMAGES).read_bytes()
    (mnist / IMAGES).write_bytes(data[: len(data) // 2])
    expect_error(tmp_path, IMAGES, "gzip")


def test_missing_dataset_names_every_file_and_where(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        get_dataset("mnist", "train", tmp_path)
    msg = str(info.value)
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        assert str(tmp_path / "mnist" / name) in msg
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in msg and "DISTNN_OFFLINE" in msg
    assert "distnn data download mnist" in msg


def test_unknown_dataset_and_split():
    from distnn.data import DataError

    with pytest.raises(DataError, match="unknown dataset 'imagenet'.*mnist"):
        get_dataset("imagenet", "train")
    with pytest.raises(DataError, match="unknown split 'valid'"):
        get_dataset("mnist", "valid")
