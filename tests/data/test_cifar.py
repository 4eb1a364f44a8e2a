"""CIFAR-10 reader on tarballs built in the canonical layout and pickle format, including
pickles that try to run code."""

from __future__ import annotations

import os
import pickletools

import numpy as np
import pytest

from distnn.data import CorruptFileError, UnsafePickleError, get_dataset
from distnn.data.cifar import load_cifar10

from .cifar_fixture import CLASS_NAMES, make_batch, py2_pickle, write_tarball

ARCHIVE = "cifar-10-python.tar.gz"


@pytest.fixture
def cifar_dir(tmp_path):
    (tmp_path / "cifar10").mkdir()
    batches = write_tarball(tmp_path / "cifar10" / ARCHIVE)
    return tmp_path, batches


def test_fixture_pickles_look_like_python2_ones():
    ops = list(pickletools.genops(py2_pickle(make_batch(2, np.random.default_rng(0)))))
    names = {op.name for op, _, _ in ops}
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {"numpy.core.multiarray _reconstruct", "numpy ndarray", "numpy dtype"}
    assert "BINSTRING" in names and "SHORT_BINSTRING" in names and "BINUNICODE" not in names


def test_reads_both_splits_in_nhwc(cifar_dir):
    folder, batches = cifar_dir
    train = get_dataset("cifar10", "train", folder, verify=False)
    test = get_dataset("cifar10", "test", folder, verify=False)
    assert (len(train), len(test)) == (30, 5)
    assert train.image_shape == (32, 32, 3) and train.class_names[9] == "truck"
    expected = np.concatenate([batches[f"data_batch_{i}"][b"data"] for i in range(1, 6)])
    x = train.read(np.arange(30))
    # pixel (y, x) of channel c is byte c*1024 + y*32 + x of the row
    for i, y, col, c in [(0, 0, 0, 0), (7, 31, 5, 2), (29, 12, 31, 1)]:
        assert x[i, y, col, c] == expected[i, c * 1024 + y * 32 + col]
    labels = sum((batches[f"data_batch_{i}"][b"labels"] for i in range(1, 6)), [])
    np.testing.assert_array_equal(train.labels, labels)
    np.testing.assert_array_equal(test.labels, batches["test_batch"][b"labels"])


def test_canonical_md5_is_enforced_unless_verify_is_off(cifar_dir):
    folder, _ = cifar_dir
    with pytest.raises(CorruptFileError) as info:
        get_dataset("cifar10", "test", folder)
    assert info.value.check == "md5" and "c58f30108f718f92721af3b95e74349a" in str(info.value)
    assert ARCHIVE in info.value.path


class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_pickle_calling_os_system_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = {b"data": RunsCode(marker), b"labels": [0]}
    archive = tmp_path / ARCHIVE
    write_tarball(archive, replace={"data_batch_3": py2_pickle(evil)})
    with pytest.raises(UnsafePickleError) as info:
        load_cifar10(archive, "train")
    err = info.value
    assert err.check == "pickle safety" and "data_batch_3" in err.path
    assert "system is not allowed" in str(err) and "nothing was executed" in str(err)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("subprocess", "Popen"),
                                         ("no_such_module_xyz", "f"), ("numpy", "load")])
def test_any_other_global_is_refused_before_import(tmp_path, module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b"U\x011\x85R."
    archive = tmp_path / ARCHIVE
    write_tarball(archive, replace={"test_batch": payload})
    with pytest.raises(UnsafePickleError, match=f"{module}.{name} is not allowed"):
        load_cifar10(archive, "test")


def test_object_arrays_are_refused(tmp_path):
    archive = tmp_path / ARCHIVE
    objects = np.array([b"a", 1], dtype=object)
    write_tarball(archive, replace={"test_batch": py2_pickle({b"data": objects, b"labels": []})})
    with pytest.raises(UnsafePickleError, match="not a plain number type"):
        load_cifar10(archive, "test")


def test_layout_errors_name_the_member(tmp_path):
    archive = tmp_path / ARCHIVE
    write_tarball(archive, skip=("data_batch_4",))
    with pytest.raises(CorruptFileError, match="data_batch_4") as info:
        load_cifar10(archive, "train")
    assert info.value.check == "archive layout"
    bad = make_batch(3, np.random.default_rng(1))
    bad[b"labels"][1] = 10
    write_tarball(archive, replace={"test_batch": py2_pickle(bad)})
    with pytest.raises(CorruptFileError, match="label 10 at index 1") as info:
        load_cifar10(archive, "test")
    assert info.value.check == "label range" and info.value.path.endswith("test_batch")
    bad[b"data"] = bad[b"data"][:, :100]
    write_tarball(archive, replace={"test_batch": py2_pickle(bad)})
    with pytest.raises(CorruptFileError, match="3072") as info:
        load_cifar10(archive, "test")
    assert info.value.check == "batch layout"


def test_truncated_archive_and_truncated_pickle(tmp_path):
    archive = tmp_path / ARCHIVE
    write_tarball(archive)
    data = archive.read_bytes()
    archive.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptFileError) as info:
        load_cifar10(archive, "train")
    assert info.value.check == "tar.gz" and info.value.path == str(archive)
    cut = py2_pickle(make_batch(2, np.random.default_rng(0)))[:-30]
    write_tarball(archive, replace={"test_batch": cut})
    with pytest.raises(CorruptFileError) as info:
        load_cifar10(archive, "test")
    assert info.value.check == "pickle" and info.value.path.endswith("test_batch")


def test_meta_must_name_ten_classes(tmp_path):
    archive = tmp_path / ARCHIVE
    write_tarball(archive, replace={"batches.meta": py2_pickle({b"label_names": CLASS_NAMES[:9]})})
    with pytest.raises(CorruptFileError, match="10 strings"):
        load_cifar10(archive, "test")


def test_pickled_dtypes_never_change_numpy_builtin_dtypes():
    from distnn.data.cifar import safe_load

    big = np.arange(3, dtype=">f8")
    loaded = safe_load(py2_pickle({b"x": big}), "test")[b"x"]
    np.testing.assert_array_equal(loaded, big)
    assert np.dtype("f8").byteorder == "=" and np.dtype("f8").isnative
    assert np.arange(2.0).tobytes() == np.array([0.0, 1.0], "<f8").tobytes()
