"""Build CIFAR-10 python tarballs in the canonical layout, with pickles written the way
Python 2 wrote them (protocol 2, str as BINSTRING, numpy.core.multiarray._reconstruct)."""

from __future__ import annotations

import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np

CLASS_NAMES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse",
               b"ship", b"truck"]


class Py2Pickler(pickle._Pickler):
    """The pure-Python pickler, changed where Python 3 differs from Python 2's output:
    bytes become Python 2 str opcodes (not _codecs.encode calls), numpy's rebuild function
    is named numpy.core.multiarray._reconstruct, and dtypes reduce with int flags."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str

    def save_global(self, obj, name=None):
        if obj is np.empty(0).__reduce__()[0]:
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)

    def reducer_override(self, obj):
        if isinstance(obj, np.dtype):
            _, args, state = obj.__reduce__()
            return np.dtype, (args[0].encode(), 0, 1), tuple(
                s.encode() if isinstance(s, str) else s for s in state)
        return NotImplemented


def py2_pickle(obj) -> bytes:
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def make_batch(n: int, rng, label: bytes = b"training batch 1 of 5") -> dict:
    """A batch dict like the canonical ones: planes R, G, B of 32x32, row-major."""
    return {b"batch_label": label,
            b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"filenames": [b"img_%05d.png" % i for i in range(n)]}


def write_tarball(path: Path, per_batch: int = 6, test_n: int = 5, seed: int = 0,
                  replace: dict | None = None, skip: tuple = ()) -> dict:
    """Write cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} into a .tar.gz.

    replace: {member: raw bytes} written instead of the generated pickle; skip: members left
    out. Returns {member: batch dict} of what was generated (for comparisons).
    """
    rng = np.random.default_rng(seed)
    batches = {f"data_batch_{i}": make_batch(per_batch, rng, b"training batch %d of 5" % i)
               for i in range(1, 6)}
    batches["test_batch"] = make_batch(test_n, rng, b"testing batch 1 of 1")
    meta = {b"num_cases_per_batch": per_batch, b"label_names": CLASS_NAMES, b"num_vis": 3072}
    members = {name: py2_pickle(b) for name, b in batches.items()}
    members["batches.meta"] = py2_pickle(meta)
    members.update(replace or {})
    with tarfile.open(path, "w:gz") as tar:
        for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                     "data_batch_5", "test_batch", "batches.meta"):
            if name in skip:
                continue
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(members[name])
            tar.addfile(info, io.BytesIO(members[name]))
    return batches
