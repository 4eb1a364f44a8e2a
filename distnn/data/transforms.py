"""Preprocessing: per-channel normalisation statistics, float conversion, and augmentation.

Normalisation: images are scaled to [0, 1] (x / 255) first, then mean and std are taken per
channel over every pixel of the training split: x_norm = (x / 255 - mean) / std.
"""

from __future__ import annotations

import numpy as np

AUGMENT_STREAM = 0x4155  # keeps augmentation draws apart from other (seed, epoch) users
STD_FLOOR = 1e-6  # a constant channel would otherwise divide by zero
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def compute_normalization(dataset, max_samples: int | None = None,
                          block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(mean (C,), std (C,)) float32 of the dataset's pixels scaled to [0, 1] (float32 codes
    of a features file as they are).

    max_samples: use that many samples evenly spaced over the split (deterministic, no RNG)
    instead of all of them. Reads in blocks of `block` samples, so an HDF5 dataset is never
    held in memory whole. Sums are float64, so 50000x32x32 pixels lose nothing.
    """
    n = len(dataset)
    if n == 0:
        raise ValueError(f"compute_normalization: {getattr(dataset, 'name', 'dataset')} is empty")
    if max_samples is not None and max_samples < n:
        if max_samples < 1:
            raise ValueError(f"max_samples must be >= 1, got {max_samples}")
        indices = np.unique(np.linspace(0, n - 1, max_samples).round().astype(np.int64))
    else:
        indices = np.arange(n, dtype=np.int64)
    channels = int(dataset.image_shape[-1])
    total = np.zeros(channels, np.float64)
    squares = np.zeros(channels, np.float64)
    for start in range(0, len(indices), block):
        x = dataset.read(indices[start:start + block]).reshape(-1, channels).astype(np.float64)
        total += x.sum(axis=0)
        squares += np.einsum("ij,ij->j", x, x)
    count = len(indices) * int(np.prod(dataset.image_shape[:-1]))
    top = value_scale(dataset.read(indices[:1]).dtype)
    mean = total / count / top
    var = np.maximum(squares / count / top ** 2 - mean ** 2, 0.0)
    return mean.astype(np.float32), np.maximum(np.sqrt(var), STD_FLOOR).astype(np.float32)


def value_scale(dtype: np.dtype) -> float:
    """What a stored value is divided by to give the model's input before normalisation: 255
    for uint8 pixels, 1 for float32 codes (features files)."""
    return 255.0 if np.dtype(dtype) == np.uint8 else 1.0


def to_float(images: np.ndarray, normalization=None) -> np.ndarray:
    """uint8 (n, H, W, C) -> float32 (n, H, W, C): x / 255 (float32 codes: x), then
    (x - mean) / std per channel if normalization=(mean (C,), std (C,)) is given. One fused
    multiply-add pass. A distnn.data.preprocess.Preprocess (mean_image, pca_whiten) applies
    itself instead (pca_whiten gives (n, 1, 1, k))."""
    if normalization is not None and hasattr(normalization, "apply"):
        return normalization.apply(images)
    scale = np.full(images.shape[-1], 1.0 / value_scale(images.dtype), dtype=np.float32)
    if normalization is None:
        return np.multiply(images, scale, dtype=np.float32)
    mean, std = (np.asarray(a, dtype=np.float32) for a in normalization)
    scale /= std
    x = np.multiply(images, scale, dtype=np.float32)
    x -= mean / std
    return x


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser on uint64 arrays (wrapping arithmetic): a counter-based hash, so
    each sample's draw is computed from its own key, not from a stream shared with others."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_draws(indices: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """(n,) uint64 random words, one per sample, a pure function of (seed, epoch, index)."""
    key = np.random.SeedSequence([AUGMENT_STREAM, seed, epoch]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        return _mix64(np.asarray(indices, dtype=np.uint64) * _GOLDEN + key)


class RandomCropFlip:
    """Random crop after zero padding by `pad` pixels, and (if flip) a horizontal flip with
    probability 1/2. Works on uint8 images before normalisation, so the padding is black, as
    in the usual CIFAR recipe.

    Draws are keyed by (seed, epoch, dataset index): a sample is augmented the same way
    whichever rank reads it and whatever the world size.
    """

    def __init__(self, pad: int = 4, flip: bool = True):
        if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
            raise ValueError(f"RandomCropFlip: pad must be an integer >= 0, got {pad!r}")
        self.pad, self.flip = pad, bool(flip)

    def __call__(self, images: np.ndarray, indices: np.ndarray, seed: int,
                 epoch: int) -> np.ndarray:
        """images: uint8 (n, H, W, C); indices: (n,) dataset indices -> uint8 (n, H, W, C)."""
        n, h, w, _ = images.shape
        if len(indices) != n:
            raise ValueError(f"RandomCropFlip: {n} images but {len(indices)} indices")
        if n == 0 or (self.pad == 0 and not self.flip):
            return images
        words = sample_draws(indices, seed, epoch)
        span = np.uint64(2 * self.pad + 1)
        dy = (words % span).astype(np.intp)
        dx = ((words >> np.uint64(16)) % span).astype(np.intp)
        flip = ((words >> np.uint64(32)) & np.uint64(1)).astype(bool) & self.flip
        p = self.pad
        padded = np.pad(images, ((0, 0), (p, p), (p, p), (0, 0))) if p else images
        out = np.empty_like(images)
        # A slice per sample: measured 4x faster than one fancy-index gather for batch 128.
        for i in range(n):
            window = padded[i, dy[i]:dy[i] + h, dx[i]:dx[i] + w]
            out[i] = window[:, ::-1] if flip[i] else window
        return out

    def __repr__(self) -> str:
        return f"RandomCropFlip(pad={self.pad}, flip={self.flip})"
