"""Strict reader of gzipped IDX files (the MNIST / Fashion-MNIST format) and a writer for them.

IDX: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dims, one big-endian
uint32 per dim, then exactly prod(dims) payload bytes. Images are 2051 (3 dims), labels 2049
(1 dim). Every deviation raises CorruptFileError naming the file and the check.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from distnn.data.errors import CorruptFileError

UINT8 = 0x08
IMAGES_MAGIC = 0x0803  # 2051
LABELS_MAGIC = 0x0801  # 2049
# Samples an IDX file may hold when the count is not checked (verify=False; the MNIST splits
# hold 60000 and 10000). Decompression stops past what that many take (78 MB of 28x28 images),
# so a small .gz cannot fill the memory.
MAX_SAMPLES = 100_000


def read_gzip(path: str | Path, max_bytes: int, samples: int) -> bytes:
    """The decompressed bytes; a truncated or non-gzip file is a 'gzip' check failure, one that
    decompresses to more than max_bytes (what `samples` samples take) a 'gzip size' one."""
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read(max_bytes + 1)
    except (OSError, EOFError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(path, "gzip", f"cannot decompress: {exc}") from None
    if len(raw) > max_bytes:
        raise CorruptFileError(path, "gzip size", f"decompresses to more than {max_bytes} "
                                                  f"bytes, expected at most that ({samples} "
                                                  f"samples)")
    return raw


def parse_idx(raw: bytes, path: str | Path, ndim: int) -> np.ndarray:
    """A read-only uint8 array of shape dims (a view on `raw`, no copy)."""
    magic_expected = (UINT8 << 8) | ndim
    if len(raw) < 4:
        raise CorruptFileError(path, "IDX header", f"only {len(raw)} bytes, need at least 4")
    magic = int.from_bytes(raw[:4], "big")
    if magic != magic_expected:
        raise CorruptFileError(path, "IDX magic", f"got {magic} (0x{magic:08x}), expected "
                                                  f"{magic_expected} (uint8, {ndim} dims)")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise CorruptFileError(path, "IDX header", f"{len(raw)} bytes, the {ndim} dims need "
                                                   f"{header}")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, 4))
    need = int(np.prod(dims, dtype=np.int64))
    if len(raw) - header != need:
        raise CorruptFileError(path, "IDX payload length", f"{len(raw) - header} bytes after the "
                                                           f"header, dims {dims} need {need}")
    return np.frombuffer(raw, np.uint8, need, header).reshape(dims)


def load_idx_pair(images_path, labels_path, image_hw: tuple, num_classes: int,
                  count: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, 1) uint8 (read-only) and labels (n,) int64 from two .gz IDX files.

    Checks: gzip, decompressed size (at most count, else MAX_SAMPLES, samples), magic, header,
    payload length, (H, W) == image_hw, n == count (if given), same n in both files, every
    label in [0, num_classes) (IDX labels are uint8: integral by format).
    """
    n = MAX_SAMPLES if count is None else count
    images = parse_idx(read_gzip(images_path, 16 + n * int(np.prod(image_hw)), n), images_path, 3)
    if images.shape[1:] != tuple(image_hw):
        raise CorruptFileError(images_path, "IDX dims", f"images are {images.shape[1:]}, "
                                                        f"expected {tuple(image_hw)}")
    if count is not None and images.shape[0] != count:
        raise CorruptFileError(images_path, "IDX dims", f"{images.shape[0]} images, expected "
                                                        f"{count}")
    labels = parse_idx(read_gzip(labels_path, 8 + n, n), labels_path, 1)
    if labels.shape[0] != images.shape[0]:
        raise CorruptFileError(labels_path, "IDX dims", f"{labels.shape[0]} labels for "
                                                        f"{images.shape[0]} images")
    if labels.size and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise CorruptFileError(labels_path, "label range", f"label {int(labels[bad])} at index "
                                                           f"{bad}, expected 0..{num_classes - 1}")
    return images[..., None], labels.astype(np.int64)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (1 to 255 dims)."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, UINT8, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    return header + array.tobytes()


def write_idx_gz(path: str | Path, array: np.ndarray) -> None:
    """Write a gzipped IDX file with reproducible bytes (no name or time in the gzip header)."""
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                                 compresslevel=9, mtime=0) as gz:
        gz.write(encode_idx(array))
