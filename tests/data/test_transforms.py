"""Normalisation statistics, float conversion and random crop + flip."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.data import (
    ArrayDataset,
    BatchIterator,
    RandomCropFlip,
    ShardSampler,
    compute_normalization,
    to_float,
    write_h5,
)
from distnn.data.transforms import sample_draws


def image_set(n=60, shape=(32, 32, 3), seed=0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
    return ArrayDataset(images, rng.integers(0, 10, n), [str(i) for i in range(10)], "toy",
                        "train")


def test_normalization_matches_a_float64_reference(tmp_path):
    ds = image_set(50)
    x = ds.images.astype(np.float64) / 255.0
    mean, std = compute_normalization(ds, block=7)
    assert mean.dtype == std.dtype == np.float32 and mean.shape == (3,)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-6)
    np.testing.assert_allclose(std, x.std(axis=(0, 1, 2)), rtol=1e-6)
    h5 = write_h5(tmp_path / "toy.h5", {"train": ds}, "toy", "")
    from distnn.data import H5Dataset

    with H5Dataset(h5, "train") as lazy:
        np.testing.assert_array_equal(compute_normalization(lazy, block=16), (mean, std))
    sub_mean, _ = compute_normalization(ds, max_samples=10)
    picked = x[np.linspace(0, 49, 10).round().astype(int)]
    np.testing.assert_allclose(sub_mean, picked.mean(axis=(0, 1, 2)), rtol=1e-6)


def test_mnist_statistics_are_the_well_known_ones(mnist_train):
    mean, std = compute_normalization(mnist_train)
    np.testing.assert_allclose([mean[0], std[0]], [0.1307, 0.3081], atol=5e-5)


def test_constant_channel_gets_a_floor_not_a_zero_std():
    ds = ArrayDataset(np.full((4, 2, 2, 1), 7, np.uint8), np.zeros(4), ["a"], "flat", "train")
    _, std = compute_normalization(ds)
    assert std[0] > 0 and np.isfinite(to_float(ds.images, compute_normalization(ds))).all()


def test_to_float_normalizes_per_channel():
    ds = image_set(5)
    mean, std = np.array([0.5, 0.4, 0.3], np.float32), np.array([0.2, 0.25, 0.3], np.float32)
    x = to_float(ds.images, (mean, std))
    assert x.dtype == np.float32 and x.shape == ds.images.shape
    np.testing.assert_allclose(x, (ds.images / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(to_float(ds.images), ds.images / 255.0, rtol=1e-6)


def windows(padded, h, w):
    """Every (dy, dx) crop of a padded image, plain and mirrored."""
    for dy in range(padded.shape[0] - h + 1):
        for dx in range(padded.shape[1] - w + 1):
            crop = padded[dy:dy + h, dx:dx + w]
            yield crop
            yield crop[:, ::-1]


def test_each_output_is_a_zero_padded_crop_possibly_mirrored():
    ds = image_set(20, shape=(8, 8, 3))
    out = RandomCropFlip(pad=2)(ds.images, np.arange(20), seed=1, epoch=0)
    assert out.shape == ds.images.shape and out.dtype == np.uint8
    for img, got in zip(ds.images, out, strict=True):
        padded = np.pad(img, ((2, 2), (2, 2), (0, 0)))
        assert any(np.array_equal(got, c) for c in windows(padded, 8, 8))


def test_draws_cover_all_offsets_and_flip_about_half():
    words = sample_draws(np.arange(20000), seed=5, epoch=2)
    dy = words % np.uint64(9)
    flips = (words >> np.uint64(32)) & np.uint64(1)
    assert set(dy.tolist()) == set(range(9)) and 0.48 < flips.mean() < 0.52
    assert not np.array_equal(words, sample_draws(np.arange(20000), seed=5, epoch=3))
    np.testing.assert_array_equal(words[[7, 3]], sample_draws(np.array([7, 3]), 5, 2))


def test_no_op_settings_return_the_input():
    ds = image_set(3)
    assert RandomCropFlip(pad=0, flip=False)(ds.images, np.arange(3), 0, 0) is ds.images
    mirrored = RandomCropFlip(pad=0, flip=True)(ds.images, np.arange(3), 0, 0)
    for img, got in zip(ds.images, mirrored, strict=True):
        assert np.array_equal(got, img) or np.array_equal(got, img[:, ::-1])
    with pytest.raises(ValueError, match="pad"):
        RandomCropFlip(pad=-1)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_augmentation_does_not_depend_on_world_size_or_rank(world):
    ds = image_set(50)
    aug = RandomCropFlip(pad=4)
    per_index = {}
    for size in (1, world):
        got = {}
        for rank in range(size):
            sampler = ShardSampler(len(ds), 12, rank, size, seed=9)
            sampler.set_epoch(2)
            with BatchIterator(ds, sampler, augment=aug, prefetch=False) as it:
                for step, (x, _) in enumerate(it):
                    for i, row in zip(sampler.local_indices(step), x, strict=True):
                        got[int(i)] = row
        per_index[size] = got
    assert per_index[1].keys() == per_index[world].keys() == set(range(50))
    for i in range(50):
        np.testing.assert_array_equal(per_index[1][i], per_index[world][i])
