"""A checkpoint write that fails (disk full, I/O error, any exception part-way) keeps the previous
checkpoint, leaves no temp file and ends the run with exit 74 and one line."""

import errno
import os
import subprocess
import uuid

import h5py
import pytest

from distnn.exit_codes import ExitCode
from distnn.train import retention
from distnn.train.checkpoint import load_checkpoint
from tests.train.faults import run_with_fault
from tests.train.runs import run, write_config
from tests.train.test_checkpoint import snapshot


def test_exception_part_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    retention.save_step(snapshot(step=1), tmp_path, keep=2)
    calls = [0]
    original = h5py.Group.create_dataset

    def failing(self, *args, **kwargs):
        calls[0] += 1
        if calls[0] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing)
    with pytest.raises(OSError, match="No space left"):
        retention.save_step(snapshot(step=2), tmp_path, keep=2)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.h5", "step-000001.h5"]
    assert load_checkpoint(tmp_path / "last.h5").step == 1


def stderr_lines(out) -> list[str]:
    return [ln for ln in out.stderr.splitlines() if ln.strip()]


@pytest.mark.parametrize("phase", ["mid-encode", "mid-file", "before-link"])
def test_failed_write_ends_the_run_with_exit_74(tmp_path, phase):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 8},
                       checkpoint={"every_steps": 1})
    rd = tmp_path / "run"
    out = run_with_fault(tmp_path, ["train", str(cfg), "--run-dir", str(rd)], save=3,
                         phase=phase, kill=False)
    assert out.returncode == ExitCode.WRITE_FAILED == 74, out.stderr
    lines = stderr_lines(out)
    assert len(lines) == 1 and lines[0].startswith("distnn train: checkpoint write failed: "), \
        out.stderr
    last = rd / "checkpoints/last.h5"
    assert f"the last good checkpoint is {last} (step 2)" in lines[0]
    assert f"injected {phase}" in lines[0]
    assert load_checkpoint(last).step == 2
    assert not [p for p in last.parent.iterdir() if p.name.endswith(".tmp")]
    resumed = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr


def test_failed_first_write_says_there_is_no_earlier_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 8},
                       checkpoint={"every_steps": 1})
    out = run_with_fault(tmp_path, ["train", str(cfg), "--run-dir", str(tmp_path / "run")],
                         save=1, phase="before-write", kill=False)
    assert out.returncode == 74 and "no earlier checkpoint exists" in out.stderr, out.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs mounted at tmp_path/run/checkpoints (root only); skips where mount fails."""
    folder = tmp_path / "run" / "checkpoints"
    folder.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", f"distnn-{uuid.uuid4()}",
                              str(folder)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill (needs root): {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_a_really_full_disk(tmp_path, small_disk):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 6},
                       checkpoint={"every_steps": 1, "keep_last": 5})
    # Fill the disk but for room for about 1.5 checkpoints (~47 kB each): the first write fits,
    # the second runs out of space part-way.
    filler = small_disk / "filler"
    st = os.statvfs(small_disk)
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 72 * 1024))
    rd = small_disk.parent
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 74, out.stderr
    lines = stderr_lines(out)
    assert len(lines) == 1 and "No space left on device" in lines[0], out.stderr
    assert load_checkpoint(small_disk / "last.h5").step == 1
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "last.h5",
                                                            "step-000001.h5"]
