"""CIFAR-10 straight from the canonical python tarball, with an unpickler that cannot run code.

The archive holds cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: Python 2
protocol-2 pickles of dicts with byte-string keys. A batch is {b'batch_label': str,
b'labels': [int]*10000, b'data': uint8 ndarray (10000, 3072) as 3 planes R, G, B of 32x32
row-major, b'filenames': [str]}. The only globals such a pickle names are the three numpy
callables that rebuild an ndarray; SafeUnpickler admits those (wrapped so they accept only
plain, non-object arrays) and refuses every other global before it is looked up.
"""

from __future__ import annotations

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from distnn.data.errors import CorruptFileError, UnsafePickleError

PREFIX = "cifar-10-batches-py/"
TRAIN_MEMBERS = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_MEMBERS = ("test_batch",)
META_MEMBER = "batches.meta"
SIDE, PIXELS = 32, 32 * 32 * 3
# What a member may declare, checked before it is read (a small .tar.gz can declare a member of
# gigabytes): a batch of 10000 images (the canonical ones are 31035704 bytes: 3072 per image
# plus its label and file name), the small meta dict. And how many members the archive may have.
MEMBER_BYTES = {**dict.fromkeys(TRAIN_MEMBERS + TEST_MEMBERS, 10000 * (PIXELS + 256)),
                META_MEMBER: 1 << 16}
MAX_MEMBERS = 64  # the canonical archive has 9 (the folder, 7 pickles, readme.html)
_RECONSTRUCT = np.empty(0).__reduce__()[0]  # numpy's ndarray rebuild function, whatever its module


class Refused(pickle.UnpicklingError):
    """Raised inside the unpickler when a pickle asks for something outside the allow-list."""


def _reconstruct(subtype, shape, typecode):
    if subtype is not np.ndarray:
        raise Refused(f"_reconstruct of {subtype!r}, only numpy.ndarray allowed")
    return _RECONSTRUCT(np.ndarray, shape, typecode)


def _dtype(spec, *args):
    """A fresh numeric dtype. copy=True matters: the pickle's BUILD then calls __setstate__ on
    it, which must never touch numpy's shared builtin dtype objects."""
    spec = spec.decode("ascii") if isinstance(spec, bytes) else spec
    dt = np.dtype(spec)
    if dt.kind not in "biufc":
        raise Refused(f"dtype {spec!r} is not a plain number type (it may hold Python objects)")
    return np.dtype(spec, align=False, copy=True)


# Python 2 numpy wrote numpy.core.multiarray; numpy >= 2 names the same function numpy._core.
ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _dtype,
}


class SafeUnpickler(pickle.Unpickler):
    """Unpickles plain containers, bytes/str, numbers and numeric numpy arrays; nothing that
    names any other global (os.system, builtins.eval, ...) is even imported."""

    def find_class(self, module: str, name: str):
        try:
            return ALLOWED[(module, name)]
        except KeyError:
            raise Refused(f"global {module}.{name} is not allowed") from None


def safe_load(data: bytes, where: str):
    """Unpickle `data` (named `where` in errors) with encoding='bytes', as written by Python 2."""
    try:
        return SafeUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Refused as exc:
        raise UnsafePickleError(where, "pickle safety", f"{exc}; nothing was executed") from None
    except Exception as exc:  # truncated or garbled pickle: any of a dozen exception types
        raise CorruptFileError(where, "pickle", f"cannot unpickle: {exc!r}") from None


def _check_batch(batch, where: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 32, 32, 3) uint8, labels (n,) int64) from one unpickled batch dict."""
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise CorruptFileError(where, "batch layout", "expected a dict with b'data', b'labels'")
    data, labels = batch[b"data"], batch[b"labels"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 \
            or data.shape[1] != PIXELS:
        got = (type(data).__name__, getattr(data, "dtype", None), getattr(data, "shape", None))
        raise CorruptFileError(where, "batch layout", f"b'data' is {got}, expected uint8 "
                                                      f"(n, {PIXELS})")
    if not isinstance(labels, list) or not all(type(v) is int for v in labels) \
            or len(labels) != data.shape[0]:
        raise CorruptFileError(where, "batch layout", f"b'labels' must be a list of "
                                                      f"{data.shape[0]} ints")
    y = np.asarray(labels, dtype=np.int64)
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        bad = int(np.argmax((y < 0) | (y >= num_classes)))
        raise CorruptFileError(where, "label range", f"label {int(y[bad])} at index {bad}, "
                                                     f"expected 0..{num_classes - 1}")
    # Planes (n, C, H, W) -> NHWC, the model's layout; one copy.
    x = np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1))
    return x, y


def _class_names(meta, where: str, num_classes: int) -> tuple[str, ...]:
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or len(names) != num_classes or \
            not all(isinstance(n, (bytes, str)) for n in names):
        raise CorruptFileError(where, "meta layout", f"expected b'label_names', a list of "
                                                     f"{num_classes} strings")
    return tuple(n.decode("utf-8") if isinstance(n, bytes) else n for n in names)


def _check_member(archive: Path, info: tarfile.TarInfo, name: str | None, count: int) -> None:
    """Refuse an archive of too many members, or a member declaring more than its format
    holds, before anything is read."""
    if count > MAX_MEMBERS:
        raise CorruptFileError(archive, "archive layout", f"more than {MAX_MEMBERS} members, "
                                                          f"expected the 9 of CIFAR-10")
    limit = MEMBER_BYTES.get(name or "")
    if limit is not None and info.size > limit:
        raise CorruptFileError(f"{archive}:{info.name}", "member size",
                               f"declares {info.size} bytes, expected at most {limit} for "
                               f"{'the meta dict' if name == META_MEMBER else '10000 images'}")


def _read_members(archive: Path, wanted: tuple) -> dict:
    """{member: unpickled object} in one forward pass: seeking back in a .tar.gz would
    decompress it again from the start."""
    found = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for count, info in enumerate(tar, 1):
                name = info.name[len(PREFIX):] if info.name.startswith(PREFIX) else None
                _check_member(archive, info, name, count)
                member = tar.extractfile(info) if name in wanted and info.isfile() else None
                if member is not None:
                    found[name] = safe_load(member.read(), f"{archive}:{info.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise CorruptFileError(archive, "tar.gz", f"cannot read the archive: {exc}") from None
    absent = [PREFIX + m for m in wanted if m not in found]
    if absent:
        raise CorruptFileError(archive, "archive layout", f"no member(s) {', '.join(absent)}")
    return found


def load_cifar10(archive: str | Path, split: str, num_classes: int = 10):
    """Read one split from the tarball (no extraction to disk; md5 is checked by the caller).

    Returns (images (n, 32, 32, 3) uint8, labels (n,) int64, class_names).
    """
    archive = Path(archive)
    members = {"train": TRAIN_MEMBERS, "test": TEST_MEMBERS}[split]
    found = _read_members(archive, members + (META_MEMBER,))
    names = _class_names(found.pop(META_MEMBER), f"{archive}:{PREFIX}{META_MEMBER}", num_classes)
    parts = [_check_batch(found.pop(m), f"{archive}:{PREFIX}{m}", num_classes) for m in members]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels, names
