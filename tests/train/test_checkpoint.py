"""HDF5 checkpoints: round trip, atomic replacement, clear errors for bad files."""

import multiprocessing as mp
import os
import signal
import time

import numpy as np
import pytest

from distnn.train.checkpoint import Snapshot, check_compatible, load_checkpoint, save_checkpoint
from distnn.train.errors import CheckpointError

SPEC = [{"type": "flatten"}, {"type": "dense", "units": 3}]


def snapshot(step=5, size=10):
    rng = np.random.default_rng(step)
    return Snapshot(
        model={"dense1.W": rng.standard_normal((size, 3)).astype(np.float32),
               "dense1.b": np.zeros(3, np.float32)},
        optimizer={"velocity": rng.standard_normal(size * 3 + 3).astype(np.float32), "t": 4,
                   "lr_scale": 0.5},
        normalization=(np.array([0.13], np.float32), np.array([0.31], np.float32)),
        step=step, epoch=1, step_in_epoch=2, config_yaml="name: x\n", model_spec=SPEC,
        coordinator={"early": {"best": 0.5}, "history": [1, 2]},
    )


def test_round_trip(tmp_path):
    snap = snapshot()
    save_checkpoint(snap, tmp_path / "c" / "last.h5")
    back = load_checkpoint(tmp_path / "c" / "last.h5")
    for k, v in snap.model.items():
        assert np.array_equal(back.model[k], v) and back.model[k].dtype == v.dtype
    assert np.array_equal(back.optimizer["velocity"], snap.optimizer["velocity"])
    assert back.optimizer["t"] == 4 and back.optimizer["lr_scale"] == 0.5
    assert (back.step, back.epoch, back.step_in_epoch) == (5, 1, 2)
    assert back.coordinator == snap.coordinator and back.model_spec == SPEC
    assert np.array_equal(back.normalization[1], snap.normalization[1])
    assert [p.name for p in (tmp_path / "c").iterdir()] == ["last.h5"]  # no temp files left


def test_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "last.h5"
    save_checkpoint(snapshot(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(path)
    (tmp_path / "x.h5").write_text("not hdf5")
    with pytest.raises(CheckpointError, match="x.h5"):
        load_checkpoint(tmp_path / "x.h5")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.h5")


def test_wrong_model_is_refused(tmp_path):
    save_checkpoint(snapshot(), tmp_path / "last.h5")
    snap = load_checkpoint(tmp_path / "last.h5")
    other = [{"type": "flatten"}, {"type": "dense", "units": 4}]
    with pytest.raises(CheckpointError, match="does not match the configured model"):
        check_compatible(snap, other, tmp_path / "last.h5")


def _write_forever(path):
    big = snapshot(step=99, size=2_000_000)  # ~24 MB: the kill lands mid-write
    while True:
        save_checkpoint(big, path)


def test_kill_during_write_keeps_previous_checkpoint(tmp_path):
    path = tmp_path / "last.h5"
    save_checkpoint(snapshot(step=1), path)
    ctx = mp.get_context("spawn")
    for delay in (0.3, 0.7, 1.1):
        proc = ctx.Process(target=_write_forever, args=(path,))
        proc.start()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        snap = load_checkpoint(path)  # always a complete file: the old one or a finished new one
        assert snap.step in (1, 99)
