"""The augmentation's random words, pinned to exact values (data/transforms.py).

A sample's word is splitmix64's finaliser of `index * 0x9E3779B97F4A7C15 + key`, the key drawn
from np.random.SeedSequence([0x4155, seed, epoch]); RandomCropFlip takes its row offset from the
word's low bits (word % (2 pad + 1)), its column offset from bits 16 and up, its flip from bit
32. The reference below is written out with Python integers from those documented constants;
three of its outputs are checked against the published splitmix64 sequence.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from distnn.data import RandomCropFlip, transforms
from distnn.data.transforms import sample_draws

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
STREAM = 0x4155


def mix64(x: int) -> int:
    """splitmix64's finaliser (Steele, Lea and Flood; Vigna's splitmix64.c), 64-bit wrapping."""
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def words(indices, seed: int, epoch: int) -> list[int]:
    key = int(np.random.SeedSequence([STREAM, seed, epoch]).generate_state(1, np.uint64)[0])
    return [mix64((int(i) * GOLDEN + key) & MASK) for i in indices]


def test_reference_is_splitmix64():
    # splitmix64 seeded with 0 returns mix(1 * GOLDEN), mix(2 * GOLDEN), ...: its well-known
    # first outputs.
    assert [mix64(k * GOLDEN & MASK) for k in (1, 2, 3)] == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("x", [0, 1, 2, 0x12345678, 1 << 40, 1 << 63, GOLDEN, 3 * GOLDEN & MASK,
                               0xFFFFFFFF00000000, MASK])
def test_mix64_matches_the_reference(x):
    got = transforms._mix64(np.array([x], dtype=np.uint64))
    assert got.dtype == np.uint64 and int(got[0]) == mix64(x)


def test_mix64_of_the_published_inputs():
    x = np.array([GOLDEN, 2 * GOLDEN & MASK, 3 * GOLDEN & MASK], dtype=np.uint64)
    assert transforms._mix64(x).tolist() == [
        0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


@pytest.mark.parametrize("seed, epoch", [(0, 0), (5, 2), (123456789, 41)])
def test_sample_draws_are_the_documented_words(seed, epoch):
    indices = np.array([0, 1, 2, 7, 999, 59999, 2 ** 31 + 5])
    got = sample_draws(indices, seed, epoch)
    assert got.dtype == np.uint64 and got.tolist() == words(indices, seed, epoch)


def test_one_index_alone_gives_its_word_without_an_overflow_warning():
    # The multiply-add and the finaliser wrap around by design, for a scalar index too.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = sample_draws(7, 5, 2)
    assert int(got) == words([7], 5, 2)[0]


@pytest.mark.parametrize("pad, flip", [(2, True), (4, True), (3, False), (0, True)])
def test_crop_offsets_and_flip_come_from_their_own_bits(pad, flip):
    rng = np.random.default_rng(1)
    n, h, w = 48, 5, 6
    images = rng.integers(1, 256, (n, h, w, 2), dtype=np.uint8)
    indices = rng.permutation(10_000)[:n]
    seed, epoch = 11, 3
    got = RandomCropFlip(pad=pad, flip=flip)(images, indices, seed, epoch)
    span = 2 * pad + 1
    seen = set()
    for img, out, word in zip(images, got, words(indices, seed, epoch), strict=True):
        dy, dx, mirror = word % span, (word >> 16) % span, flip and bool((word >> 32) & 1)
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)))
        want = padded[dy:dy + h, dx:dx + w]
        np.testing.assert_array_equal(out, want[:, ::-1] if mirror else want)
        seen.add((dy, dx, mirror))
    assert len(seen) >= min(2 * span, 4)  # the batch shows several different draws


def test_defaults_are_pad_4_with_flip():
    aug = RandomCropFlip()
    assert (aug.pad, aug.flip) == (4, True)
    assert repr(aug) == "RandomCropFlip(pad=4, flip=True)"


@pytest.mark.parametrize("pad", [True, 2.5, "3", -1, None])
def test_pad_must_be_an_int_at_least_0(pad):
    with pytest.raises(ValueError) as info:
        RandomCropFlip(pad=pad)
    assert str(info.value) == f"RandomCropFlip: pad must be an integer >= 0, got {pad!r}"


def test_image_and_index_counts_must_agree():
    images = np.zeros((3, 4, 4, 1), np.uint8)
    with pytest.raises(ValueError) as info:
        RandomCropFlip(pad=1)(images, np.arange(2), 0, 0)
    assert str(info.value) == "RandomCropFlip: 3 images but 2 indices"
