"""The canonical MNIST / Fashion-MNIST files in ../shared/data: checksums, shapes, dtypes,
class counts, and an exact convert -> HDF5 -> read round trip."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.data import H5Dataset, get_dataset, write_h5
from distnn.data.catalog import FASHION_MNIST, MNIST
from distnn.data.fetch import md5_file

from .conftest import SHARED_DATA, needs_shared

pytestmark = needs_shared

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.mark.parametrize("spec", [MNIST, FASHION_MNIST], ids=lambda s: s.name)
def test_checksums_and_sizes_match_the_canonical_files(spec):
    for f in spec.files:
        path = SHARED_DATA / spec.folder / f.name
        assert path.stat().st_size == f.size
        assert md5_file(path) == f.md5
        # The shared README lists the same md5 for the same file.
        assert f.md5 in (SHARED_DATA / "README.md").read_text()


def test_mnist_shapes_dtypes_and_class_counts(mnist_train, mnist_test):
    for ds, n, counts in ((mnist_train, 60000, MNIST_TRAIN_COUNTS),
                          (mnist_test, 10000, MNIST_TEST_COUNTS)):
        assert len(ds) == n and ds.image_shape == (28, 28, 1) and ds.num_classes == 10
        assert ds.labels.dtype == np.int64 and ds.labels.shape == (n,)
        assert np.bincount(ds.labels).tolist() == counts
        x = ds.read(np.arange(5))
        assert x.dtype == np.uint8 and x.shape == (5, 28, 28, 1)
    assert mnist_train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert np.bincount(mnist_train.labels)[0] == 5923
    assert "md5 verified" in mnist_train.provenance and "LeCun" in mnist_train.provenance


def test_fashion_mnist_is_balanced_with_its_class_names():
    train = get_dataset("fashion_mnist", "train")  # via $DISTNN_DATA_DIR
    test = get_dataset("fashion-mnist", "test", SHARED_DATA)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    assert np.bincount(test.labels).tolist() == [1000] * 10
    assert train.class_names[0] == "T-shirt/top" and train.class_names[9] == "Ankle boot"
    assert train.read(np.array([0])).shape == (1, 28, 28, 1)


def test_read_keeps_the_order_asked_for_and_allows_duplicates(mnist_test):
    idx = np.array([9, 3, 3, 0, 9999])
    x = mnist_test.read(idx)
    for row, i in zip(x, idx, strict=True):
        np.testing.assert_array_equal(row, mnist_test.read(np.array([i]))[0])
    assert mnist_test.read(np.array([], dtype=np.int64)).shape == (0, 28, 28, 1)
    with pytest.raises(IndexError, match="10000"):
        mnist_test.read(np.array([10000]))


def test_convert_to_hdf5_round_trips_exactly(tmp_path, mnist_train, mnist_test):
    path = write_h5(tmp_path / "mnist.h5", {"train": mnist_train, "test": mnist_test}, "mnist",
                    mnist_train.provenance)
    for src in (mnist_train, mnist_test):
        with H5Dataset(path, src.split) as h5:
            assert (len(h5), h5.image_shape, h5.class_names) == \
                (len(src), src.image_shape, src.class_names)
            np.testing.assert_array_equal(h5.labels, src.labels)
            everything = np.arange(len(src))
            np.testing.assert_array_equal(h5.read(everything), src.read(everything))
            idx = np.random.default_rng(0).integers(0, len(src), 300)  # unsorted, duplicates
            np.testing.assert_array_equal(h5.read(idx), src.read(idx))
            assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in h5.provenance
    via_name = get_dataset(str(path), "test")
    assert via_name.name == "mnist" and len(via_name) == 10000
    via_name.close()
