"""The generic distnn HDF5 image format: writer and lazy reader.

Layout (no compression):

    /<split>/images   uint8 (n, H, W, C), chunks (k, H, W, C); or float32 (n, H, W, C): the
                      codes of a layer that `distnn features` writes, (n, 1, 1, D) for vectors
    /<split>/labels   int64 (n,)
    attrs on /: format="distnn-images", version=1, name, provenance, class_names (list of str)

Chunking: a random batch touches ~one chunk per sample, and HDF5 reads whole chunks, so a
chunk should hold few samples; but one-sample chunks make a large chunk index and slow
contiguous (evaluation) reads. k = the whole images in CHUNK_BYTES = 16 KiB (20 MNIST or 5
CIFAR images). Measured with benchmarks/hdf5_read.py (warm page cache): 128 random samples
~1.1-1.4 ms for chunks of 1-64 KiB (1.8-2.3 ms at 256 KiB); 256 contiguous samples 0.5 ms with
one-image chunks, 0.1-0.25 ms at 16 KiB.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from distnn.data.base import Dataset
from distnn.data.errors import CorruptFileError, DataError

FORMAT, VERSION = "distnn-images", 1
IMAGE_TYPES = (np.dtype(np.uint8), np.dtype(np.float32))  # pixels; codes (distnn features)
CHUNK_BYTES = 16 * 1024
WRITE_BLOCK = 4096  # samples copied per write while converting


def chunk_samples(image_shape: tuple, chunk_bytes: int = CHUNK_BYTES) -> int:
    """Samples per chunk: as many whole images as fit in chunk_bytes, at least one."""
    return max(1, chunk_bytes // int(np.prod(image_shape)))


def write_h5(path: str | os.PathLike, splits: dict, name: str, provenance: str,
             chunk_bytes: int = CHUNK_BYTES) -> Path:
    """Write {split: Dataset} to `path` (via a temp file + os.replace, so a crash never leaves a
    partial file at `path`). Images are copied in blocks, never all in memory."""
    path = Path(path)
    first = next(iter(splits.values()))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION, name=name, provenance=provenance,
                           class_names=list(first.class_names))
            for split, ds in splits.items():
                _write_split(f.create_group(split), ds, chunk_bytes)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _write_split(group, ds: Dataset, chunk_bytes: int) -> None:
    n, shape = len(ds), tuple(ds.image_shape)
    k = min(chunk_samples(shape, chunk_bytes), max(n, 1))
    images = group.create_dataset("images", shape=(n,) + shape, dtype=np.uint8,
                                  chunks=(k,) + shape)
    group.create_dataset("labels", data=np.asarray(ds.labels, dtype=np.int64))
    for start in range(0, n, WRITE_BLOCK):
        stop = min(n, start + WRITE_BLOCK)
        images[start:stop] = ds.read(np.arange(start, stop))


def _class_names(value, path: Path) -> tuple[str, ...]:
    """The class_names attribute: a non-empty 1-D list of strings."""
    if not isinstance(value, (list, np.ndarray)) or np.ndim(value) != 1 or not len(value) \
            or not all(isinstance(c, (str, bytes)) for c in value):
        raise CorruptFileError(path, "HDF5 layout", f"attribute class_names is {value!r:.80}, "
                                                    f"expected a non-empty list of strings")
    return tuple(c.decode("utf-8", "replace") if isinstance(c, bytes) else c for c in value)


def _check_stored(data: h5py.Dataset, name: str, path: Path) -> None:
    """The file must hold every byte the dataset declares (uncompressed, fully written), so that
    a small file cannot declare (and make us allocate) more than it holds."""
    declared, stored = data.size * data.dtype.itemsize, data.id.get_storage_size()
    if stored < declared:
        raise CorruptFileError(path, "HDF5 storage", f"{name} declares {declared} bytes and "
                                                     f"stores {stored}; expected uncompressed, "
                                                     f"fully written data")


def _checked_labels(raw: np.ndarray, name: str, path: Path, num_classes: int) -> np.ndarray:
    """int64 labels, each an integer in [0, num_classes) (integral floats are accepted)."""
    bad = ~np.isfinite(raw) | (raw != np.round(raw)) if raw.dtype.kind == "f" else None
    if bad is not None and bad.any():
        i = int(np.argmax(bad))
        raise CorruptFileError(path, "label type", f"{name}[{i}] is {float(raw[i])}, "
                                                   f"expected an integer class index")
    out_of_range = (raw < 0) | (raw >= num_classes)
    if out_of_range.any():
        i = int(np.argmax(out_of_range))
        raise CorruptFileError(path, "label range", f"{name}[{i}] is {raw[i]}, expected "
                                                    f"0..{num_classes - 1}")
    return raw.astype(np.int64)


class H5Dataset(Dataset):
    """One split of a distnn HDF5 file. Labels are loaded; images are read on demand, only the
    samples asked for (the file stays open until close())."""

    def __init__(self, path: str | os.PathLike, split: str):
        self.path = Path(path)
        if not self.path.is_file():
            raise DataError(f"{self.path}: no such HDF5 file")
        try:
            self._file = h5py.File(self.path, "r")
        except OSError as exc:
            raise CorruptFileError(self.path, "HDF5", f"cannot open: {exc}") from None
        try:
            self._bind(split)
        except BaseException:
            self._file.close()
            raise

    def _bind(self, split: str) -> None:
        f = self._file
        fmt = f.attrs.get("format")
        if not (isinstance(fmt, str) and fmt == FORMAT):
            raise CorruptFileError(self.path, "HDF5 format", f"attribute format is {fmt!r:.80}, "
                                                             f"expected {FORMAT!r}")
        group = f.get(split)
        if not (isinstance(group, h5py.Group) and isinstance(group.get("images"), h5py.Dataset)
                and isinstance(group.get("labels"), h5py.Dataset)):
            raise DataError(f"{self.path}: no split {split!r} (with images and labels); the file "
                            f"holds {list(f)}")
        self._images = group["images"]
        self.class_names = _class_names(f.attrs.get("class_names"), self.path)
        self.num_classes = len(self.class_names)
        self.name, self.split = str(f.attrs.get("name", self.path.stem)), split
        self.provenance = f"{self.path} [{split}], converted from:\n{f.attrs.get('provenance', '')}"
        self.image_shape = tuple(int(d) for d in self._images.shape[1:])
        self.stored_dtype = self._images.dtype  # uint8 pixels, or float32 codes
        labels = group["labels"]
        if self._images.dtype not in IMAGE_TYPES or self._images.ndim != 4 or labels.ndim != 1 \
                or labels.dtype.kind not in "iuf" or self._images.shape[0] != labels.shape[0]:
            raise CorruptFileError(self.path, "HDF5 layout", f"{split}/images is "
                                                             f"{self._images.dtype} "
                                                             f"{self._images.shape}, labels "
                                                             f"{labels.dtype} {labels.shape}; "
                                                             f"expected uint8 or float32 (n, H, "
                                                             f"W, C) and integer (n,)")
        for name, data in ((f"{split}/images", self._images), (f"{split}/labels", labels)):
            _check_stored(data, name, self.path)
        self.labels = _checked_labels(labels[()], f"{split}/labels", self.path, self.num_classes)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 (or float32, features) (len(indices), H, W, C) in the order given; reads only
        those samples.

        One plain slice read per run of consecutive indices, in increasing order: measured
        8-25x faster than an h5py point (fancy) selection of the same 128 random indices, which
        builds a slow hyperslab union (benchmarks/hdf5_read.py).
        """
        idx = self.check_indices(indices)
        out = np.empty((idx.size,) + self.image_shape, dtype=self.stored_dtype)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        # Runs of consecutive indices (evaluation reads contiguous blocks) are one slice each.
        cuts = np.flatnonzero(np.diff(ordered) != 1) + 1
        for a, b in zip(np.r_[0, cuts], np.r_[cuts, idx.size], strict=True):
            out[order[a:b]] = self._images[ordered[a]:ordered[b - 1] + 1]
        return out

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
