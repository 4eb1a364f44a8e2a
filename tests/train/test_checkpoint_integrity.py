"""Checkpoint integrity: checksums verified on load, normalisation and shape checks, retention of
step-numbered checkpoints with last.h5 linking the newest, the --resume auto fallback, temp files
of dead writers, the umask."""

import errno
import json
import os
import time

import h5py
import numpy as np
import pytest

from distnn.train import retention
from distnn.train.checkpoint import Snapshot, load_checkpoint, save_checkpoint
from distnn.train.errors import CheckpointError
from tests.train.runs import metrics, params, run, write_config
from tests.train.test_checkpoint import snapshot


def flip_exponents(path, name, count):
    """Flip one exponent bit of the first `count` float32 values of dataset `name` in place, in
    the file's bytes (not through HDF5), as a failing disk or a bad copy would."""
    with h5py.File(path, "r") as fh:
        offset, size = fh[name].id.get_offset(), fh[name].size
    assert size >= count
    raw = bytearray(path.read_bytes())
    for i in range(count):
        raw[offset + 4 * i + 3] ^= 0x40  # little-endian float32: bit 30, the exponent's top
    path.write_bytes(bytes(raw))


def test_flipped_exponent_bits_are_refused_on_resume(tmp_path):
    # The attacker's finding: 250 floats with a flipped exponent bit loaded, resumed, exited 0.
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 4})
    rd = tmp_path / "run"
    assert run(["train", str(cfg), "--run-dir", str(rd)]).returncode == 0
    flip_exponents(rd / "checkpoints/last.h5", "model/dense7.W", 250)
    more = write_config(tmp_path / "d.yaml", train={"epochs": 1, "max_steps": 8})
    out = run(["train", str(more), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert "last.h5" in lines[0] and "'model/dense7.W' fails its CRC-32 check" in lines[0]


def test_a_corrupt_array_is_named(tmp_path):
    path = tmp_path / "last.h5"
    save_checkpoint(snapshot(), path)
    flip_exponents(path, "optimizer/velocity", 1)
    with pytest.raises(CheckpointError, match=r"last\.h5: array 'optimizer/velocity' fails"):
        load_checkpoint(path)


def test_changed_attributes_are_refused(tmp_path):
    path = tmp_path / "last.h5"
    save_checkpoint(snapshot(), path)
    with h5py.File(path, "r+") as fh:
        fh.attrs["step"] = 6  # one bit (5 -> 6 flips two, any change counts)
    with pytest.raises(CheckpointError, match="attributes .* fail their CRC-32 check"):
        load_checkpoint(path)


@pytest.mark.parametrize("mean,std", [([0.1], [0.0]), ([0.1], [-0.3]), ([np.nan], [0.3]),
                                      ([0.1], [np.inf])])
def test_invalid_stored_normalization_is_refused(tmp_path, mean, std):
    snap = snapshot()
    snap.normalization = (np.array(mean, np.float32), np.array(std, np.float32))
    save_checkpoint(snap, tmp_path / "last.h5")
    with pytest.raises(CheckpointError, match="last.h5: stored normalisation is invalid"):
        load_checkpoint(tmp_path / "last.h5")


def test_missing_and_reshaped_arrays_are_refused(tmp_path):
    path = tmp_path / "last.h5"
    save_checkpoint(snapshot(), path)
    with h5py.File(path, "r+") as fh:
        del fh["model/dense1.b"]
    with pytest.raises(CheckpointError, match="array 'model/dense1.b' is missing"):
        load_checkpoint(path)
    save_checkpoint(snapshot(), path)
    with h5py.File(path, "r+") as fh:
        crc = fh["model/dense1.W"].attrs["crc32"]
        data = np.array(fh["model/dense1.W"])
        del fh["model/dense1.W"]
        fh.create_dataset("model/dense1.W", data=data.reshape(3, 10)).attrs["crc32"] = crc
    with pytest.raises(CheckpointError, match="array 'model/dense1.W' fails its CRC-32"):
        load_checkpoint(path)


def test_checkpoint_that_does_not_fit_the_model_is_one_line(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 2})
    rd = tmp_path / "run"
    assert run(["train", str(cfg), "--run-dir", str(rd)]).returncode == 0
    snap = load_checkpoint(rd / "checkpoints/last.h5")
    snap.model["dense7.W"] = snap.model["dense7.W"][:-1]  # a consistent file, the wrong shape
    save_checkpoint(snap, tmp_path / "odd.h5")
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "r2"), "--resume",
               str(tmp_path / "odd.h5")])
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert "odd.h5: does not fit this run's model" in out.stderr and "dense7.W" in out.stderr


def test_unverified_format_1_still_loads(tmp_path):
    path = tmp_path / "old.h5"
    snap = snapshot()
    with h5py.File(path, "w") as fh:  # the layout written before checksums
        for k, v in snap.model.items():
            fh.create_dataset(f"model/{k}", data=v)
        fh.create_dataset("optimizer/velocity", data=snap.optimizer["velocity"])
        fh["optimizer"].attrs.update(t=4, lr_scale=0.5)
        fh.create_dataset("normalization/mean", data=snap.normalization[0])
        fh.create_dataset("normalization/std", data=snap.normalization[1])
        fh.attrs.update(format="distnn-checkpoint-1", step=5, epoch=1, step_in_epoch=2,
                        config="name: x\n", model_spec=json.dumps(snap.model_spec),
                        coordinator=json.dumps(snap.coordinator))
    back = load_checkpoint(path)
    assert back.step == 5 and np.array_equal(back.model["dense1.W"], snap.model["dense1.W"])


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_checkpoints_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        retention.save_step(snapshot(step=3), tmp_path, keep=2)
    finally:
        os.umask(old)
    for name in ("step-000003.h5", "last.h5"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_retention_keeps_the_newest_and_last_links_the_newest(tmp_path):
    for step in (1, 2, 3, 4):
        retention.save_step(snapshot(step=step), tmp_path, keep=3)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["last.h5", "step-000002.h5", "step-000003.h5", "step-000004.h5"]
    assert (tmp_path / "last.h5").samefile(tmp_path / "step-000004.h5")
    # Resumed from step 2 (or rolled back): the abandoned steps 3 and 4 go at the next write.
    retention.save_step(snapshot(step=3), tmp_path, keep=3)
    assert sorted(n for n, _ in retention.step_files(tmp_path)) == [2, 3]
    assert load_checkpoint(tmp_path / "last.h5").step == 3


def test_without_hard_links_last_is_a_copy(tmp_path, monkeypatch):
    def no_link(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    retention.save_step(snapshot(step=7), tmp_path, keep=2)
    assert not (tmp_path / "last.h5").samefile(tmp_path / "step-000007.h5")
    assert load_checkpoint(tmp_path / "last.h5").step == 7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.h5", "step-000007.h5"]


def test_failed_link_keeps_the_previous_last(tmp_path, monkeypatch):
    retention.save_step(snapshot(step=1), tmp_path, keep=2)

    def broken_replace(src, dst):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="Input/output error"):
        retention.save_step(snapshot(step=2), tmp_path, keep=2)
    monkeypatch.undo()
    assert load_checkpoint(tmp_path / "last.h5").step == 1
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_find_resumable_falls_back_past_corrupt_files(tmp_path):
    for step in (1, 2, 3):
        retention.save_step(snapshot(step=step), tmp_path, keep=3)
    flip_exponents(tmp_path / "step-000003.h5", "model/dense1.W", 1)  # last.h5: the same file
    found, skipped = retention.find_resumable(tmp_path)
    assert found == tmp_path / "step-000002.h5"
    assert len(skipped) == 1 and skipped[0].startswith("last.h5 (array 'model/dense1.W'")
    (tmp_path / "last.h5").unlink()
    found, skipped = retention.find_resumable(tmp_path)
    assert found == tmp_path / "step-000002.h5"
    assert skipped[0] == "last.h5 (missing)" and skipped[1].startswith("step-000003.h5 (")


def test_a_fallback_step_file_becomes_last(tmp_path):
    for step in (1, 2):
        retention.save_step(snapshot(step=step), tmp_path, keep=3)
    retention.resumed_from(tmp_path, tmp_path / "step-000001.h5")
    assert (tmp_path / "last.h5").samefile(tmp_path / "step-000001.h5")
    retention.resumed_from(tmp_path, tmp_path / "step-000001.h5")  # already: nothing to do
    elsewhere = tmp_path / "other"
    retention.save_step(snapshot(step=5), elsewhere, keep=1)
    retention.resumed_from(tmp_path, elsewhere / "step-000005.h5")  # not this run's: left
    assert (tmp_path / "last.h5").samefile(tmp_path / "step-000001.h5")


def test_resume_auto_falls_back_with_one_warning(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 10},
                       checkpoint={"every_steps": 2, "keep_last": 3})
    straight, rd = tmp_path / "straight", tmp_path / "run"
    assert run(["train", str(cfg), "--run-dir", str(straight)]).returncode == 0
    short = write_config(tmp_path / "s.yaml", train={"epochs": 1, "max_steps": 6},
                         checkpoint={"every_steps": 2, "keep_last": 3})
    assert run(["train", str(short), "--run-dir", str(rd)]).returncode == 0
    names = sorted(p.name for p in (rd / "checkpoints").iterdir())
    assert names == ["best.h5", "last.h5", "step-000002.h5", "step-000004.h5", "step-000006.h5"]
    flip_exponents(rd / "checkpoints/last.h5", "model/conv0.W", 3)
    out = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 0, out.stderr
    warnings = [ln for ln in out.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "skipped last.h5 (array 'model/conv0.W'" in warnings[0]
    assert "resuming from" in warnings[0] and "step-000004.h5" in warnings[0]
    a, b = params(straight / "checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)  # steps 5 and 6 redone exactly
    assert [m["step"] for m in metrics(rd) if m["split"] == "train"][-1] == 10


def test_stale_temp_files_are_removed_at_start(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 2})
    rd = tmp_path / "run"
    assert run(["train", str(cfg), "--run-dir", str(rd)]).returncode == 0
    folder = rd / "checkpoints"
    stale = [folder / ".last.h5.ab12cd34.tmp", folder / ".step-000002.h5.k9_x0zzq.tmp"]
    others = [folder / "notes.tmp", folder / ".last.h5.tmp", rd / ".last.h5.ab12cd34.tmp"]
    for p in stale + others:
        p.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    for p in stale + others:
        os.utime(p, (hour_ago, hour_ago))
    more = write_config(tmp_path / "d.yaml", train={"epochs": 1, "max_steps": 4})
    out = run(["train", str(more), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 0, out.stderr
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in others)  # not the writer's pattern, or not in checkpoints/
    assert "removed 2 temp file(s) of an interrupted checkpoint write" in out.stderr


def test_snapshot_round_trip_keeps_every_optimizer_scalar(tmp_path):
    snap = Snapshot(model={"w": np.arange(4, dtype=np.float32)}, optimizer={"t": 0},
                    normalization=None, step=0, epoch=0, step_in_epoch=0, config_yaml="",
                    model_spec=[], coordinator={})
    save_checkpoint(snap, tmp_path / "x.h5")
    back = load_checkpoint(tmp_path / "x.h5")
    assert back.optimizer == {"t": 0} and back.normalization is None
