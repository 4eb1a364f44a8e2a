"""The inputs of `distnn predict`: image files, folders of them, .npy arrays and HDF5 files, as
model inputs (m, H, W, C) uint8 (0..255) or float32 (0..1).

Listing the inputs (`list_inputs`) is cheap (file names, array headers, no pixels), so every
rank lists them all and decides alike on a missing file or an array of the wrong shape; reading
(`read_span`) touches only the images asked for, so each rank opens only its share.

Image files (.png, .jpg, .jpeg, .bmp, .gif, .webp; the first frame of an animation) are read
with Pillow and converted to the model's channels as Keras' `load_img(color_mode=...)` does:
Pillow mode "L" for a 1-channel model (a colour image becomes grey, ITU-R 601-2 luma
L = 0.299 R + 0.587 G + 0.114 B), "RGB" for a 3-channel one (a grey image has its value in all
three channels; an alpha channel is dropped). Images of more than 8 bits per channel (modes I,
I;16, F) are refused rather than clipped, and so is any size other than the model's: nothing
is resized.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from distnn.data import H5Dataset
from distnn.data.hdf5 import FORMAT

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
ARRAY_SUFFIXES = (".npy",)
HDF5_SUFFIXES = (".h5", ".hdf5")
MODES = {1: "L", 3: "RGB"}  # the model's channel count -> the Pillow mode images become
KINDS = (f"an image file ({', '.join(IMAGE_SUFFIXES)}), a folder of them, a .npy array or an "
         f"HDF5 file (.h5)")


class InputError(ValueError):
    """An input `distnn predict` cannot use; the message names it, what was found and what was
    expected."""


@dataclass(frozen=True)
class Source:
    """`count` images of one file. kind "image": an image file (count 1); "npy" and "hdf5":
    the rows of an array (the HDF5 dataset `key`). `single`: a one-image array (H, W, C), named
    by its path alone; `grey`: rows stored (N, H, W), given the channel axis of a 1-channel
    model; `codes`: float32 values of a distnn features file, not checked to lie in 0..1."""

    path: Path
    kind: str
    count: int
    key: str = ""
    single: bool = False
    grey: bool = False
    codes: bool = False

    def names(self, a: int = 0, b: int | None = None) -> list[str]:
        """The names of images a..b-1 (default: all): the path, or `path[i]` for the rows of
        an array."""
        if self.kind == "image" or self.single:
            return [str(self.path)]
        return [f"{self.path}[{i}]" for i in range(a, self.count if b is None else b)]

    def read(self, a: int, b: int, shape: tuple[int, ...]) -> np.ndarray:
        """Images a..b-1 of this input: (b - a, H, W, C) uint8, or float32 in 0..1."""
        if self.kind == "image":
            return read_image(self.path, shape)[None]
        try:
            if self.kind == "npy":
                rows = np.load(self.path, mmap_mode="r", allow_pickle=False)
                x = np.array(rows[None] if self.single else rows[a:b])  # a copy: file closes
            else:
                with h5py.File(self.path, "r") as fh:
                    x = np.asarray(fh[self.key][a:b])
        except (OSError, ValueError, KeyError) as exc:  # changed or damaged since listed
            raise InputError(f"{self.path}: cannot read images {a}..{b - 1} ({exc})") from None
        x = x[..., None] if self.grey else x
        if x.dtype == np.uint8:
            return np.ascontiguousarray(x)
        x = x.astype(np.float32)
        if not self.codes:
            _check_unit(x, self.names(a, b))
        return x


def pillow() -> Any:
    """Pillow's Image module; InputError with the install command when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError:
        raise InputError("reading image files needs Pillow, which is not installed: "
                         "pip install 'distnn[images]'") from None
    return Image


def read_image(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """The image file at `path` as uint8 (H, W, C) for a model of input `shape` (H, W, C),
    converted to its channels (module docstring). InputError naming the file when it is not a
    readable image, or of another size or depth."""
    image_module = pillow()
    height, width, channels = shape
    try:
        with image_module.open(path) as im:
            if im.size != (width, height):
                raise InputError(f"{path}: image of {im.size[0]}x{im.size[1]} pixels, expected "
                                 f"{width}x{height} (the model's input; resize it first)")
            if im.mode.startswith(("I", "F")):
                raise InputError(f"{path}: image of mode {im.mode} (more than 8 bits per "
                                 f"channel), expected 8-bit pixels (L, RGB, P, ...)")
            im.load()
            pixels = np.asarray(im.convert(MODES[channels]), dtype=np.uint8)
    except InputError:
        raise
    except Exception as exc:  # Pillow's decoders raise many types (OSError, SyntaxError, ...)
        raise InputError(f"{path}: not a readable image ({type(exc).__name__}: {exc})") from None
    return pixels.reshape(height, width, channels)


def _check_unit(x: np.ndarray, names: Sequence[str]) -> None:
    """Float images must hold values in 0..1: InputError naming the first image that does not."""
    bad = ~np.isfinite(x) | (x < 0) | (x > 1)
    if bad.any():
        i = int(np.argmax(bad.reshape(len(x), -1).any(axis=1)))
        value = x[i][bad[i]].flat[0]
        raise InputError(f"{names[i]}: float pixel value {value:g}, expected floats in 0..1 "
                         f"(or uint8 pixels 0..255)")


def _array_source(path: Path, kind: str, found: tuple[int, ...], dtype: np.dtype,
                  shape: tuple[int, ...], key: str = "", codes: bool = False) -> Source:
    """The Source of an array of shape `found` and `dtype` for a model of input `shape`
    (H, W, C): (N, H, W, C), one (H, W, C), or (N, H, W) when C is 1; uint8 or float."""
    where = f"{path}" + (f" [{key}]" if kind == "hdf5" else "")
    if dtype != np.uint8 and dtype.kind != "f":
        raise InputError(f"{where}: array of dtype {dtype}, expected uint8 (0..255) or float "
                         f"(0..1)")
    if found == shape:
        return Source(path, kind, 1, key, single=True, codes=codes)
    if len(found) == 4 and found[1:] == shape:
        source = Source(path, kind, found[0], key, codes=codes)
    elif shape[2] == 1 and len(found) == 3 and found[1:] == shape[:2]:
        source = Source(path, kind, found[0], key, grey=True, codes=codes)
    else:
        dims = ", ".join(map(str, shape))
        grey = f" or (N, {shape[0]}, {shape[1]})" if shape[2] == 1 else ""
        raise InputError(f"{where}: array of shape {found}, expected (N, {dims}){grey} or one "
                         f"image ({dims}) for this model's {shape[0]}x{shape[1]}x{shape[2]} "
                         f"inputs")
    if source.count == 0:
        raise InputError(f"{where}: array of shape {found} holds no images, expected at "
                         f"least one")
    return source


def _npy(path: Path, shape: tuple[int, ...]) -> Source:
    try:
        rows = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:  # not a .npy file, or an object array
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    return _array_source(path, "npy", tuple(rows.shape), rows.dtype, shape)


def _hdf5(path: Path, shape: tuple[int, ...], split: str, key: str) -> Source:
    """A distnn dataset file (its split's images) or a plain HDF5 file (its dataset `key`)."""
    try:
        with h5py.File(path, "r") as fh:
            fmt = fh.attrs.get("format")
            if not (isinstance(fmt, str) and fmt == FORMAT):
                data = fh.get(key)
                if not isinstance(data, h5py.Dataset):
                    raise InputError(f"{path}: no dataset {key!r} (--key); the file holds "
                                     f"{sorted(fh)}")
                return _array_source(path, "hdf5", tuple(data.shape), data.dtype, shape, key)
    except OSError as exc:
        raise InputError(f"{path}: not a readable HDF5 file ({exc})") from None
    data = H5Dataset(path, split)  # checks the layout; DataError naming the file
    try:
        found, dtype = (len(data),) + tuple(data.image_shape), np.dtype(data.stored_dtype)
    finally:
        data.close()
    return _array_source(path, "hdf5", found, dtype, shape, f"{split}/images",
                         codes=dtype == np.float32)


def _folder(path: Path) -> list[Source]:
    """Its image files (hidden ones skipped), sorted by name; not recursive."""
    try:
        files = sorted((p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                        and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: p.name)
    except OSError as exc:
        raise InputError(f"{path}: cannot list the folder ({exc})") from None
    if not files:
        raise InputError(f"{path}: a folder with no image files, expected "
                         f"{', '.join(IMAGE_SUFFIXES)} files in it")
    return [Source(p, "image", 1) for p in files]


def list_inputs(inputs: Sequence[str], shape: tuple[int, ...], split: str = "test",
                key: str = "images") -> list[Source]:
    """The Sources of the command-line inputs, in order (a folder gives one per image file),
    for a model of input `shape` (H, W, C). Reads names and array headers only. InputError (or
    DataError for a distnn dataset file) naming the input that cannot be used."""
    shape = tuple(int(d) for d in shape)
    sources: list[Source] = []
    for given in inputs:
        path = Path(given)
        suffix = path.suffix.lower()
        if not path.exists():
            raise InputError(f"{path}: no such file or folder")
        if path.is_dir():
            sources += _folder(path)
        elif suffix in IMAGE_SUFFIXES:
            sources.append(Source(path, "image", 1))
        elif suffix in ARRAY_SUFFIXES:
            sources.append(_npy(path, shape))
        elif suffix in HDF5_SUFFIXES:
            sources.append(_hdf5(path, shape, split, key))
        else:
            raise InputError(f"{path}: not an input distnn predict reads; expected {KINDS}")
    if any(s.kind == "image" for s in sources):
        pillow()
        if shape[2] not in MODES:
            raise InputError(f"image files give 1 (grey) or 3 (RGB) channels; this model takes "
                             f"{shape[2]}: give its inputs as a .npy or HDF5 array")
    return sources


def read_span(sources: Sequence[Source], a: int, b: int,
              shape: tuple[int, ...]) -> list[np.ndarray]:
    """Images a..b-1 of the inputs taken in order, as one array per input they come from:
    (m, H, W, C) uint8 or float32."""
    pieces, start = [], 0
    for source in sources:
        stop = start + source.count
        lo, hi = max(a, start), min(b, stop)
        if lo < hi:
            pieces.append(source.read(lo - start, hi - start, tuple(shape)))
        start = stop
    return pieces
