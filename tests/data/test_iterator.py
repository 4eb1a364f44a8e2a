"""The batch iterator: same batches with and without prefetch, resume mid-epoch, clean stop."""

from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from distnn.data import (
    ArrayDataset,
    BatchIterator,
    H5Dataset,
    RandomCropFlip,
    ShardSampler,
    write_h5,
)

NORM = (np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32))


def image_set(n=45, shape=(16, 16, 3)) -> ArrayDataset:
    rng = np.random.default_rng(1)
    return ArrayDataset(rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                        rng.integers(0, 10, n), [str(i) for i in range(10)], "toy", "train")


def batches(ds, sampler, **kw):
    with BatchIterator(ds, sampler, normalization=NORM, augment=RandomCropFlip(), **kw) as it:
        return list(it)


def prefetch_threads():
    return [t for t in threading.enumerate() if t.name == "distnn-prefetch"]


def wait_no_threads(timeout=2.0):
    """A retry with a stated bound: poll until no prefetch thread is left, for up to `timeout`
    seconds (a dropped iterator's thread ends on its own, shortly after the drop)."""
    end = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < end:
        time.sleep(0.01)
    left = prefetch_threads()
    assert not left, f"{len(left)} prefetch thread(s) still alive after waiting {timeout} s"
    return True


def test_prefetch_yields_exactly_the_synchronous_batches():
    ds = image_set()
    sampler = ShardSampler(len(ds), 8, 1, 2, seed=3)
    sampler.set_epoch(4)
    eager, lazy = batches(ds, sampler, prefetch=True), batches(ds, sampler, prefetch=False)
    assert len(eager) == len(lazy) == sampler.steps_per_epoch == 6
    for step, ((xa, ya), (xb, yb)) in enumerate(zip(eager, lazy, strict=True)):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(ya, ds.labels[sampler.local_indices(step)])
        assert xa.dtype == np.float32 and ya.dtype == np.int64 and xa.shape[1:] == (16, 16, 3)
    assert wait_no_threads()


def test_start_step_resumes_mid_epoch():
    ds = image_set()
    sampler = ShardSampler(len(ds), 8, 0, 1, seed=3)
    full = batches(ds, sampler)
    tail = batches(ds, sampler, start_step=4)
    assert len(tail) == len(full) - 4
    for (xa, ya), (xb, yb) in zip(full[4:], tail, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert batches(ds, sampler, start_step=sampler.steps_per_epoch) == []
    with pytest.raises(ValueError, match="start_step 7 out of range"):
        BatchIterator(ds, sampler, start_step=7)


def test_empty_local_batch_on_the_last_step():
    ds = image_set(n=10)
    sampler = ShardSampler(10, 8, 3, 4, seed=0)
    out = batches(ds, sampler)
    assert [len(y) for _, y in out] == [2, 0]
    assert out[1][0].shape == (0, 16, 16, 3) and out[1][0].dtype == np.float32


def test_stopping_early_ends_the_thread():
    ds = image_set()
    sampler = ShardSampler(len(ds), 4, 0, 1, seed=0)
    with BatchIterator(ds, sampler) as it:
        next(it)
        next(it)
        assert prefetch_threads()
    assert wait_no_threads()
    it = BatchIterator(ds, sampler)
    next(it)
    it.close()
    it.close()  # idempotent
    assert not prefetch_threads()
    with pytest.raises(StopIteration):
        next(it)


def test_a_dropped_iterator_stops_its_thread():
    ds = image_set()
    it = BatchIterator(ds, ShardSampler(len(ds), 4, 0, 1, seed=0))
    next(it)
    del it
    gc.collect()
    assert wait_no_threads()


class FailingDataset(ArrayDataset):
    def read(self, indices):
        if 0 in indices:
            raise OSError("disk on fire")
        return super().read(indices)


def test_errors_in_the_thread_reach_the_consumer():
    good = image_set()
    ds = FailingDataset(good.images, good.labels, good.class_names, "toy", "train")
    sampler = ShardSampler(len(ds), 45, 0, 1, seed=0, shuffle=False)
    with pytest.raises(OSError, match="disk on fire"):
        batches(ds, sampler)
    assert wait_no_threads()


def test_changing_the_epoch_while_prefetching_fails_loudly():
    ds = image_set()
    sampler = ShardSampler(len(ds), 4, 0, 1, seed=0)
    with BatchIterator(ds, sampler, prefetch=False) as it:
        next(it)
        sampler.set_epoch(1)
        with pytest.raises(RuntimeError, match="set_epoch"):
            next(it)


def test_hdf5_source_gives_the_same_batches(tmp_path):
    ds = image_set()
    path = write_h5(tmp_path / "toy.h5", {"train": ds}, "toy", "test data")
    sampler = ShardSampler(len(ds), 6, 1, 3, seed=2)
    with H5Dataset(path, "train") as lazy:
        for (xa, ya), (xb, yb) in zip(batches(ds, sampler), batches(lazy, sampler), strict=True):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    with pytest.raises(ValueError, match="sampler covers 44"):
        BatchIterator(ds, ShardSampler(44, 4, 0, 1, seed=0))
