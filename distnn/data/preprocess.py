"""Input preprocessing fitted on the training split (config `data.preprocess`, with
`data.normalize: true`): its kinds, their statistics, and applying them.

x below is a stored value / value_scale (pixels / 255; the float32 codes of a features file as
they are), as transforms.to_float scales it.

  channel_mean_std  (x - mean_c) / std_c per channel (transforms.compute_normalization). Carried
                    as the (mean (C,), std (C,)) tuple that checkpoints, Model.normalization and
                    to_float have always used; Preprocess can hold it too (`as_preprocess`).
  mean_image        x - the average training image (H, W, C); nothing is divided (AlexNet).
  pca_whiten        x flattened to D = H*W*C values, minus the training mean, projected on the
                    top k eigenvectors of the training covariance (population, float64), each
                    component divided by sqrt(eigenvalue + eps): one vector per image, shaped
                    (1, 1, k) (NHWC) for the model. Stored: the mean, the (D, k) matrix already
                    divided by sqrt(eigenvalue + eps), the k eigenvalues and eps.

Statistics: `shard_sums` adds up one worker's contiguous share of the samples (sum x, and for
pca_whiten sum x x^T, float64, in blocks); the caller adds the workers' sums (nothing here
communicates: distnn/train/run.py allreduces them) and `fit_sums` turns the totals into a
Preprocess. Pixels are whole numbers and so are their sums and products, below 2**53 in float64
for up to 1.4e11 samples: exact in any order, the same bits from any number of workers.
The eigendecomposition runs on one BLAS thread (its bits depend on the thread count, which
depends on the ranks per node); eigenvalues are sorted in descending order (a stable sort),
each eigenvector's sign is fixed (its largest-magnitude entry, the first of equals, positive),
and eigenvalues that rounding made negative are taken as 0. pca_whiten holds a D x D float64
covariance (75 MB for CIFAR's D = 3072) and applies a (D, k) float64 matrix product per batch.
The whitening matrix is kept on a grid per column (on_grid), so that its product with pixels
is exact (no rounding in any summation order), then rounded per value: a sample gets the same
bits in any batch, on any number of ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
from threadpoolctl import threadpool_limits

from distnn.data.sampler import split_bounds
from distnn.data.transforms import to_float, value_scale

KINDS = ("channel_mean_std", "mean_image", "pca_whiten")
# The arrays each kind holds, by their checkpoint names (under /normalization/).
ARRAYS = {
    "channel_mean_std": ("mean", "std"),
    "mean_image": ("mean_image",),
    "pca_whiten": ("pca_mean", "pca_whitening", "pca_eigenvalues", "pca_eps"),
}
BLOCK_VALUES = 1 << 22  # values read at a time by shard_sums (32 MiB of float64)


class Preprocess:
    """One fitted preprocessing: `kind` (one of KINDS) and its `arrays` (ARRAYS[kind], checked
    and given their dtypes here: float32 what is applied, float64 eigenvalues and eps; read
    only). ValueError, naming the array, for arrays that do not make one of the kinds."""

    def __init__(self, kind: str, arrays: Mapping[str, np.ndarray]) -> None:
        if kind not in KINDS:
            raise ValueError(f"preprocessing {kind!r}, expected one of {', '.join(KINDS)}")
        names = set(arrays)
        if names != set(ARRAYS[kind]):
            raise ValueError(f"{kind} arrays {sorted(names)}, expected {list(ARRAYS[kind])}")
        wide = ("pca_eigenvalues", "pca_eps")
        self.kind = kind
        self.arrays: dict[str, np.ndarray] = {
            k: np.ascontiguousarray(arrays[k], np.float64 if k in wide else np.float32)
            for k in ARRAYS[kind]}
        for name, arr in self.arrays.items():
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{kind}: {name} holds non-finite values")
        getattr(self, f"_check_{kind}")()
        self._cached: tuple[np.ndarray, np.ndarray] | None = None  # pca_whiten's, in apply

    # -- checks ---------------------------------------------------------------------------------
    def _check_channel_mean_std(self) -> None:
        mean, std = self.arrays["mean"], self.arrays["std"]
        if mean.ndim != 1 or mean.shape != std.shape:
            raise ValueError(f"channel_mean_std: mean {mean.shape} and std {std.shape}, "
                             f"expected two vectors of one value per channel")
        if not np.all(std > 0):
            raise ValueError(f"channel_mean_std: std {std.tolist()}, expected every value > 0")

    def _check_mean_image(self) -> None:
        mean = self.arrays["mean_image"]
        if mean.ndim != 3 or mean.size == 0:
            raise ValueError(f"mean_image: mean_image of shape {mean.shape}, expected one "
                             f"image (H, W, C)")

    def _check_pca_whiten(self) -> None:
        mean, w = self.arrays["pca_mean"], self.arrays["pca_whitening"]
        eig, eps = self.arrays["pca_eigenvalues"], self.arrays["pca_eps"]
        if mean.ndim != 3 or mean.size == 0:
            raise ValueError(f"pca_whiten: pca_mean of shape {mean.shape}, expected one image "
                             f"(H, W, C)")
        if w.ndim != 2 or w.shape[0] != mean.size or not 1 <= w.shape[1] <= mean.size:
            raise ValueError(f"pca_whiten: pca_whitening of shape {w.shape}, expected "
                             f"({mean.size}, k) with 1 <= k <= {mean.size} (D = H*W*C of "
                             f"pca_mean {mean.shape})")
        if eig.shape != (w.shape[1],) or np.any(eig < 0):
            raise ValueError(f"pca_whiten: pca_eigenvalues of shape {eig.shape}, expected "
                             f"({w.shape[1]},) values >= 0")
        if eps.shape != (1,) or not eps[0] > 0:
            raise ValueError(f"pca_whiten: pca_eps {eps.tolist()}, expected one value > 0")

    # -- what it takes and gives ----------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, ...] | None:
        """The per-image shape (H, W, C) it takes; None for channel_mean_std (any H, W)."""
        if self.kind == "channel_mean_std":
            return None
        return tuple(self.arrays["mean_image" if self.kind == "mean_image" else "pca_mean"].shape)

    @property
    def components(self) -> int | None:
        """k, the components pca_whiten keeps (None for the other kinds)."""
        return int(self.arrays["pca_whitening"].shape[1]) if self.kind == "pca_whiten" else None

    def describe(self) -> str:
        if self.kind == "pca_whiten":
            return f"pca_whiten ({self.arrays['pca_mean'].size} values -> {self.components} " \
                   f"components)"
        return self.kind

    def output_shape(self, image_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The per-sample shape the model sees for images of `image_shape`; ValueError when
        they are not the images it was fitted on."""
        image_shape = tuple(int(d) for d in image_shape)
        fitted = self.image_shape
        if fitted is None:
            channels = self.arrays["mean"].shape[0]
            if not image_shape or image_shape[-1] != channels:
                raise ValueError(f"images of shape {image_shape}, expected {channels} "
                                 f"channel(s) (the channel_mean_std statistics)")
            return image_shape
        if image_shape != fitted:
            raise ValueError(f"images of shape {image_shape}, expected {fitted} (the images "
                             f"{self.kind} was fitted on)")
        return fitted if self.kind == "mean_image" else (1, 1, int(self.components or 0))

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Stored images (n, H, W, C), uint8 pixels or float values, -> float32 model inputs:
        (n, H, W, C), or (n, 1, 1, k) for pca_whiten. ValueError for images of another shape."""
        images = np.asarray(images)
        if self.kind == "channel_mean_std":
            return to_float(images, (self.arrays["mean"], self.arrays["std"]))
        fitted = self.image_shape
        if images.shape[1:] != fitted:
            raise ValueError(f"images of shape {images.shape}, expected (n, "
                             f"{', '.join(map(str, fitted or ()))}) (the images {self.kind} "
                             f"was fitted on)")
        scale = np.float32(1.0 / value_scale(images.dtype))
        if self.kind == "mean_image":
            x = np.multiply(images, scale, dtype=np.float32)
            x -= self.arrays["mean_image"]
            return x
        # (x / top - mean) @ W as (x @ W) / top - mean @ W, in float64: whole-number pixels
        # times a matrix on a grid per column (on_grid) sum exactly in any order, so a sample's
        # values do not depend on the batch it is in (train.invariant's groups) or on BLAS.
        w64, offset = self._projection()
        n = len(images)
        out = images.reshape(n, -1).astype(np.float64) @ w64
        out /= value_scale(images.dtype)
        out -= offset
        return out.astype(np.float32).reshape(n, 1, 1, out.shape[1])

    def _projection(self) -> tuple[np.ndarray, np.ndarray]:
        """pca_whiten's matrix in float64 and mean @ matrix, correctly rounded (math.fsum of
        exact float64 products of float32 values): the same bits on any machine."""
        if self._cached is None:
            w = self.arrays["pca_whitening"].astype(np.float64)
            products = self.arrays["pca_mean"].reshape(-1, 1).astype(np.float64) * w
            offset = np.array([math.fsum(products[:, j]) for j in range(w.shape[1])])
            self._cached = (w, offset)
        return self._cached

    # -- storage --------------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """Its arrays by their checkpoint names (the kind follows from the names)."""
        return dict(self.arrays)

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> Preprocess:
        """The Preprocess whose to_arrays() gave `arrays`; ValueError when the names are not
        those of one kind, or the arrays are invalid for it."""
        names = set(arrays)
        for kind, wanted in ARRAYS.items():
            if names == set(wanted):
                return cls(kind, arrays)
        kinds = "; ".join(f"{' + '.join(a)} ({k})" for k, a in ARRAYS.items())
        raise ValueError(f"arrays {sorted(names)} are no preprocessing; expected {kinds}")

    def __repr__(self) -> str:
        return f"Preprocess({self.describe()})"


Normalization = tuple[np.ndarray, np.ndarray] | Preprocess | None


def as_preprocess(normalization: Normalization) -> Preprocess | None:
    """A (mean, std) tuple as the channel_mean_std Preprocess; a Preprocess or None as it is."""
    if normalization is None or isinstance(normalization, Preprocess):
        return normalization
    mean, std = normalization
    return Preprocess("channel_mean_std", {"mean": mean, "std": std})


def carried(pre: Preprocess | None) -> Normalization:
    """The form a run carries: channel_mean_std as the (mean, std) tuple, others as they are."""
    if pre is not None and pre.kind == "channel_mean_std":
        return pre.arrays["mean"], pre.arrays["std"]
    return pre


def normalization_arrays(normalization: Normalization) -> dict[str, np.ndarray]:
    """Its arrays by checkpoint name ({} for None): mean and std for a (mean, std) tuple."""
    if normalization is None:
        return {}
    if isinstance(normalization, Preprocess):
        return normalization.to_arrays()
    mean, std = normalization
    return {"mean": mean, "std": std}


def model_shape(normalization: Normalization, image_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-sample shape a model takes for images of `image_shape` under `normalization`:
    the images' own, except pca_whiten's (1, 1, k). ValueError when a mean_image or pca_whiten
    was fitted on images of another shape (a (mean, std) tuple is not checked here)."""
    if isinstance(normalization, Preprocess) and normalization.kind != "channel_mean_std":
        return normalization.output_shape(image_shape)
    return tuple(image_shape)


def image_shape_of(normalization: Normalization,
                   network_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The per-image shape (H, W, C) taken by a model whose network takes `network_shape`: the
    shape pca_whiten was fitted on, else the network's own."""
    if isinstance(normalization, Preprocess) and normalization.kind == "pca_whiten":
        return normalization.image_shape or tuple(network_shape)
    return tuple(network_shape)


# -- statistics -------------------------------------------------------------------------------
def check_components(components: int, image_shape: tuple[int, ...]) -> int:
    """k for pca_components `components` (0: all) on images of `image_shape`; ValueError when
    it exceeds D = H*W*C."""
    d = int(np.prod(image_shape))
    if components > d:
        raise ValueError(f"pca_components {components} exceeds D = {d} (= the values of one "
                         f"image {tuple(image_shape)}); expected at most {d} (0: all)")
    return components or d


def shard_sums(dataset, kind: str, rank: int = 0, size: int = 1,
               block_values: int = BLOCK_VALUES) -> dict[str, np.ndarray]:
    """This worker's float64 sums over its contiguous share (split_bounds) of `dataset`'s
    samples, as stored (not scaled): {"sum": (D,)} and, for pca_whiten, {"outer": (D, D)},
    the sum of x x^T. Read in blocks of about `block_values` values."""
    if kind not in ("mean_image", "pca_whiten"):
        raise ValueError(f"shard_sums: {kind!r} has no sums here, expected mean_image or "
                         f"pca_whiten")
    d = int(np.prod(dataset.image_shape))
    sums = {"sum": np.zeros(d, np.float64)}
    if kind == "pca_whiten":
        sums["outer"] = np.zeros((d, d), np.float64)
    first, last = split_bounds(len(dataset), size, rank)
    step = max(1, block_values // max(d, 1))
    for start in range(first, last, step):
        x = dataset.read(np.arange(start, min(last, start + step), dtype=np.int64))
        x = x.reshape(len(x), d).astype(np.float64)
        sums["sum"] += x.sum(axis=0)
        if kind == "pca_whiten":
            sums["outer"] += x.T @ x
    return sums


def fit_sums(kind: str, sums: Mapping[str, np.ndarray], count: int,
             image_shape: tuple[int, ...], top: float, components: int = 0,
             eps: float = 1e-5) -> Preprocess:
    """The Preprocess of `kind` from the total `sums` (shard_sums added over every worker) of
    `count` samples of `image_shape`, stored values divided by `top` (value_scale)."""
    if count < 1:
        raise ValueError(f"{kind}: no training samples to fit it on")
    image_shape = tuple(int(v) for v in image_shape)
    mean = np.asarray(sums["sum"], np.float64) / count / top
    if kind == "mean_image":
        return Preprocess(kind, {"mean_image": mean.reshape(image_shape)})
    k = check_components(components, image_shape)
    if not eps > 0:
        raise ValueError(f"pca_whiten: eps {eps}, expected > 0")
    total = np.asarray(sums["sum"], np.float64)
    cov = (np.asarray(sums["outer"], np.float64) - np.outer(total, total) / count) / count
    cov /= top * top
    with threadpool_limits(1):  # LAPACK's bits depend on its thread count: one, always
        values, vectors = np.linalg.eigh(cov)
    order = np.argsort(-values, kind="stable")[:k]
    values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
    top_rows = np.argmax(np.abs(vectors), axis=0)
    vectors *= np.where(vectors[top_rows, np.arange(k)] < 0, -1.0, 1.0)
    whitening = on_grid(vectors / np.sqrt(values + eps))
    return Preprocess(kind, {"pca_mean": mean.reshape(image_shape), "pca_whitening": whitening,
                             "pca_eigenvalues": values, "pca_eps": np.array([eps])})


def on_grid(w: np.ndarray) -> np.ndarray:
    """w (D, k) float64 rounded column by column to multiples of 2**(e - 24), where 2**e is the
    power of two just above the column's largest magnitude: at most 24 significant bits, so
    float32 holds it exactly, and whole numbers below 256 times it add up exactly in float64,
    in any order, for D < 2**21 (a sum stays below 2**53 grid steps). The rounding is at most
    2**-25 of the column's largest entry, float32's own rounding of that entry."""
    _, exponent = np.frexp(np.max(np.abs(w), axis=0))
    grid = np.ldexp(1.0, exponent - 24)
    return np.round(w / grid) * grid


def fit(dataset, kind: str, components: int = 0, eps: float = 1e-5) -> Preprocess:
    """The Preprocess of `kind` fitted on all of `dataset` in this process (mean_image or
    pca_whiten; channel_mean_std is transforms.compute_normalization)."""
    n = len(dataset)
    if n == 0:
        raise ValueError(f"{kind}: {getattr(dataset, 'name', 'dataset')} is empty")
    if kind == "pca_whiten":
        check_components(components, dataset.image_shape)  # before any sum
    top = value_scale(dataset.read(np.arange(1)).dtype)
    return fit_sums(kind, shard_sums(dataset, kind), n, dataset.image_shape, top,
                    components, eps)
