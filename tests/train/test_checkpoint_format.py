"""The checkpoint reader against malformed files: for each way a file can be wrong, the exact
one-line CheckpointError naming the file (and the array). Also: format-1 files (no checksums)
load unverified, and a file without its `meta_crc32` is refused whatever its attributes are.

The files are written with save_checkpoint and then damaged through h5py, or written by hand
with h5py in the old layout (train/checkpoint.py documents both).
"""

from __future__ import annotations

import json
import zlib

import h5py
import numpy as np
import pytest

from distnn.train.checkpoint import Snapshot, load_checkpoint, save_checkpoint
from distnn.train.errors import CheckpointError

SPEC = [{"type": "flatten"}, {"type": "dense", "units": 3}]
CORRUPT = "the file is corrupt"
CRC_FAILS = ("fails its CRC-32 check (its data, shape or type changed since it was written): "
             + CORRUPT)
META_FAILS = ("its attributes (step, config, coordinator state) fail their CRC-32 check: "
              + CORRUPT)
NOT_VECTORS = "are not two vectors of one length per channel"


def snapshot(normalization=None):
    if normalization is None:
        normalization = (np.array([0.5], np.float32), np.array([0.25], np.float32))
    return Snapshot(
        model={"dense1.W": np.arange(12, dtype=np.float32).reshape(4, 3) / 8,
               "dense1.b": np.array([0.5, -1.0, 2.0], np.float32)},
        optimizer={"velocity": np.linspace(-1, 1, 15, dtype=np.float32), "t": 4,
                   "lr_scale": 0.5},
        normalization=normalization, step=5, epoch=1, step_in_epoch=2,
        config_yaml="name: x\n", model_spec=SPEC, coordinator={"history": [1, 2]})


def saved(path, snap=None):
    save_checkpoint(snap or snapshot(), path)
    return path


def damaged(path, change):
    """A saved checkpoint, then `change(fh)` applied to it through h5py."""
    saved(path)
    with h5py.File(path, "r+") as fh:
        change(fh)
    return path


def replace_dataset(fh, name, new):
    """Put `new` (an array) where dataset `name` was, keeping its stored crc32 attribute."""
    crc = fh[name].attrs["crc32"]
    del fh[name]
    fh.create_dataset(name, data=new).attrs["crc32"] = crc


def write_format_1(path, normalization=("mean", "std")):
    """The layout written before checksums: no crc32, no `arrays` list, no meta_crc32."""
    snap = snapshot()
    with h5py.File(path, "w") as fh:
        for k, v in snap.model.items():
            fh.create_dataset(f"model/{k}", data=v)
        fh.create_dataset("optimizer/velocity", data=snap.optimizer["velocity"])
        fh["optimizer"].attrs.update(t=4, lr_scale=0.5)
        for i, part in enumerate(("mean", "std")):
            if part in normalization:
                fh.create_dataset(f"normalization/{part}", data=snap.normalization[i])
        fh.attrs.update(format="distnn-checkpoint-1", step=5, epoch=1, step_in_epoch=2,
                        config="name: x\n", model_spec=json.dumps(SPEC),
                        coordinator=json.dumps({"history": [1, 2]}))
    return path


def with_normalization(mean, std):
    return lambda path: saved(path, snapshot((np.array(mean, np.float32),
                                              np.array(std, np.float32))))


def set_attr(key, value):
    def change(fh):
        fh.attrs[key] = value
    return change


def set_scalar(key, value):
    def change(fh):
        fh["optimizer"].attrs[key] = value
    return change


def del_attr(key):
    def change(fh):
        del fh.attrs[key]
    return change


def as_group(name):
    def change(fh):
        del fh[name]
        fh.create_group(name)
    return change


def del_crc(name):
    def change(fh):
        del fh[name].attrs["crc32"]
    return change


def extra_dataset(fh):
    fh.create_dataset("optimizer/extra", data=np.ones(2, np.float32)).attrs["crc32"] = 0


def delete(name):
    def change(fh):
        del fh[name]
    return change


W = np.arange(12, dtype=np.float32).reshape(4, 3) / 8

MALFORMED = {
    "foreign format": (lambda p: damaged(p, set_attr("format", "other-2")),
                       "format 'other-2', expected 'distnn-checkpoint-2'"),
    "no format": (lambda p: damaged(p, del_attr("format")),
                  "format None, expected 'distnn-checkpoint-2'"),
    "changed attribute": (lambda p: damaged(p, set_attr("epoch", 7)), META_FAILS),
    "changed optimizer scalar": (lambda p: damaged(p, set_scalar("t", 5)), META_FAILS),
    "no meta_crc32": (lambda p: damaged(p, del_attr("meta_crc32")), META_FAILS),
    "missing array": (lambda p: damaged(p, delete("model/dense1.b")),
                      f"array 'model/dense1.b' is missing ({CORRUPT})"),
    "missing group": (lambda p: damaged(p, delete("normalization")),
                      f"array 'normalization/mean' is missing ({CORRUPT})"),
    "array is a group": (lambda p: damaged(p, as_group("model/dense1.b")),
                         f"array 'model/dense1.b' is missing ({CORRUPT})"),
    "no crc32 attribute": (lambda p: damaged(p, del_crc("model/dense1.W")),
                           f"array 'model/dense1.W' {CRC_FAILS}"),
    "changed value": (lambda p: damaged(p, lambda fh: replace_dataset(
        fh, "optimizer/velocity", np.linspace(-1, 1, 15, dtype=np.float32)[::-1])),
        f"array 'optimizer/velocity' {CRC_FAILS}"),
    "wrong dtype": (lambda p: damaged(p, lambda fh: replace_dataset(
        fh, "model/dense1.W", W.astype(np.float64))), f"array 'model/dense1.W' {CRC_FAILS}"),
    "wrong shape": (lambda p: damaged(p, lambda fh: replace_dataset(
        fh, "model/dense1.W", W.reshape(3, 4))), f"array 'model/dense1.W' {CRC_FAILS}"),
    "unexpected array": (lambda p: damaged(p, extra_dataset),
                         f"unexpected array(s) ['optimizer/extra'] ({CORRUPT})"),
    "normalisation lengths differ": (with_normalization([0.5, 0.5], [0.25, 0.25, 0.25]),
                                     f"stored normalisation mean (2,) and std (3,) {NOT_VECTORS}"),
    "normalisation not vectors": (with_normalization([[0.5, 0.5]], [[0.25, 0.25]]),
                                  f"stored normalisation mean (1, 2) and std (1, 2) "
                                  f"{NOT_VECTORS}"),
    "format 1 without mean": (lambda p: write_format_1(p, normalization=("std",)),
                              f"stored normalisation mean (0,) and std (1,) {NOT_VECTORS}"),
    "format 1 without std": (lambda p: write_format_1(p, normalization=("mean",)),
                             f"stored normalisation mean (1,) and std (0,) {NOT_VECTORS}"),
    "std zero": (with_normalization([0.5, 0.25], [0.5, 0.0]),
                 "stored normalisation is invalid (mean [0.5, 0.25], std [0.5, 0.0]; every value "
                 "must be finite and std > 0)"),
    "std negative": (with_normalization([0.5], [-0.5]),
                     "stored normalisation is invalid (mean [0.5], std [-0.5]; every value must "
                     "be finite and std > 0)"),
    "mean NaN": (with_normalization([np.nan, 0.5], [0.5, 0.5]),
                 "stored normalisation is invalid (mean [nan, 0.5], std [0.5, 0.5]; every value "
                 "must be finite and std > 0)"),
    "std infinite": (with_normalization([0.5], [np.inf]),
                     "stored normalisation is invalid (mean [0.5], std [inf]; every value must be "
                     "finite and std > 0)"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_file_is_one_exact_line(tmp_path, case):
    make, message = MALFORMED[case]
    path = make(tmp_path / "ck.h5")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {message}"


def test_the_untouched_file_loads(tmp_path):
    back = load_checkpoint(saved(tmp_path / "ck.h5"))
    assert sorted(back.model) == ["dense1.W", "dense1.b"]
    np.testing.assert_array_equal(back.model["dense1.W"], W)
    assert sorted(back.optimizer) == ["lr_scale", "t", "velocity"]
    assert back.normalization[0].tolist() == [0.5] and back.normalization[1].tolist() == [0.25]
    assert (back.step, back.epoch, back.step_in_epoch) == (5, 1, 2)
    assert back.config_yaml == "name: x\n"
    assert back.model_spec == SPEC and back.coordinator == {"history": [1, 2]}


def test_format_1_loads_unverified(tmp_path):
    back = load_checkpoint(write_format_1(tmp_path / "old.h5"))
    assert (back.step, back.epoch, back.step_in_epoch) == (5, 1, 2)
    assert sorted(back.model) == ["dense1.W", "dense1.b"]
    np.testing.assert_array_equal(back.model["dense1.W"], W)
    assert back.optimizer["t"] == 4 and back.optimizer["velocity"].shape == (15,)
    assert back.normalization[1].tolist() == [0.25]
    assert back.config_yaml == "name: x\n"


# -- meta_crc32 ------------------------------------------------------------------------------------
def meta_crc(attrs: dict, scalars: dict) -> int:
    """meta_crc32 as documented: the CRC-32 of the file attributes (all but meta_crc32) and the
    optimizer scalars, as sorted-key JSON."""
    return zlib.crc32(json.dumps({"attrs": attrs, "optimizer": scalars}, sort_keys=True).encode())


def plain(attrs) -> dict:
    return {k: v.item() if isinstance(v, np.generic) else v for k, v in attrs.items()
            if k != "meta_crc32"}


def crc_one_config(attrs: dict, scalars: dict, bits: int = 40) -> str:
    """A config text for which meta_crc of these attributes is 1: the base text plus a comment
    of '0'/'1' characters chosen by solving the (GF(2)-affine) CRC for them."""
    base = attrs["config"] + "# "

    def crc_of(chars: str) -> int:
        return meta_crc({**attrs, "config": base + chars}, scalars)

    zeros = crc_of("0" * bits)
    deltas = [crc_of("0" * i + "1" + "0" * (bits - i - 1)) ^ zeros for i in range(bits)]
    basis: dict[int, tuple[int, int]] = {}  # pivot bit -> (vector, set of positions)
    for i, vec in enumerate(deltas):
        used = 1 << i
        for bit in reversed(range(32)):
            if vec >> bit & 1:
                if bit not in basis:
                    basis[bit] = (vec, used)
                    break
                vec, used = vec ^ basis[bit][0], used ^ basis[bit][1]
    want, chosen = zeros ^ 1, 0
    for bit in reversed(range(32)):
        if want >> bit & 1:
            want, chosen = want ^ basis[bit][0], chosen ^ basis[bit][1]
    return base + "".join("1" if chosen >> i & 1 else "0" for i in range(bits))


def test_meta_crc32_is_the_crc_of_the_attributes_and_scalars(tmp_path):
    with h5py.File(saved(tmp_path / "ck.h5"), "r") as fh:
        assert int(fh.attrs["meta_crc32"]) == meta_crc(plain(fh.attrs),
                                                       plain(fh["optimizer"].attrs))


def test_missing_meta_crc32_is_refused_whatever_the_attributes_crc(tmp_path):
    # A missing checksum never matches: not even attributes whose CRC-32 happens to be 1.
    path = saved(tmp_path / "ck.h5")
    with h5py.File(path, "r+") as fh:
        scalars = plain(fh["optimizer"].attrs)
        fh.attrs["config"] = crc_one_config(plain(fh.attrs), scalars)
        del fh.attrs["meta_crc32"]
        assert meta_crc(plain(fh.attrs), scalars) == 1
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert str(info.value) == f"{path}: {META_FAILS}"
