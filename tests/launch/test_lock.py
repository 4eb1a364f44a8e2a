"""One run at a time in a run directory: the lock, on the real CLI, under mpiexec and Ray."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from distnn.config import ConfigError
from distnn.launch.lock import LOCK_NAME, RunDirLock
from tests.train.runs import run, running, wait_for, write_config

HOLD = ("import sys; from pathlib import Path; from distnn.launch.lock import RunDirLock; "
        "RunDirLock.claim(Path(sys.argv[1])); print('held', flush=True); sys.stdin.read()")


def holder(run_dir: Path) -> subprocess.Popen:
    """Another process holding the lock on run_dir until its stdin closes."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_a_held_lock_names_its_holder_and_is_free_once_it_ends(tmp_path):
    proc = holder(tmp_path / "run")
    with pytest.raises(ConfigError, match=rf"in use by pid {proc.pid} on .*distnn.lock"):
        RunDirLock.claim(tmp_path / "run")
    proc.communicate("", timeout=30)  # ends and releases
    lock = RunDirLock.claim(tmp_path / "run")
    lock.release()
    assert (tmp_path / "run" / LOCK_NAME).read_text() == ""


def test_a_stale_lock_of_a_killed_process_is_taken_over_with_a_warning(tmp_path, capsys):
    proc = holder(tmp_path / "run")
    proc.kill()
    proc.wait(timeout=30)
    lock = RunDirLock.claim(tmp_path / "run")
    try:
        err = capsys.readouterr().err
        assert f"taking over the stale lock of pid {proc.pid}" in err
    finally:
        lock.release()


def test_second_run_in_a_busy_run_directory_exits_2_and_leaves_the_first_alone(tmp_path):
    # No checkpoint before the signal: the second run meets the lock, never an existing run.
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 200},
                       checkpoint={"every_epochs": 0})
    run_dir = tmp_path / "run"
    with running(["train", str(cfg), "--run-dir", str(run_dir)]) as first:
        lock_file = run_dir / LOCK_NAME
        wait_for(lambda: lock_file.exists() and lock_file.read_text().strip(), 120,
                 "the first run to take the lock")
        for resume in ([], ["--resume", "auto"]):
            second = run(["train", str(cfg), "--run-dir", str(run_dir), *resume])
            assert second.returncode == 2, second.stderr
            lines = second.stderr.strip().splitlines()
            assert len(lines) == 1 and f"is in use by pid {first.pid}" in lines[0], lines
        assert first.poll() is None  # untouched, still training
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
        assert first.returncode == 75, err


def test_unwritable_run_directory_is_refused_before_the_data_loads(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    cfg = write_config(tmp_path / "c.yaml",
                       data={"dataset": "mnist", "data_dir": str(tmp_path / "no-data")})
    done = run(["train", str(cfg), "--run-dir", str(blocker / "run")])
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"run directory {blocker / 'run'} cannot be written" in lines[0]


def test_mpi_ranks_all_exit_2_on_a_busy_run_directory(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    proc = holder(tmp_path / "run")
    try:
        done = run(["train", str(cfg), "--run-dir", str(tmp_path / "run")], ranks=2)
    finally:
        proc.communicate("", timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("is in use by pid") == 2  # every rank says so, none hangs


def test_ray_driver_refuses_a_busy_run_directory_before_starting_ray(tmp_path):
    pytest.importorskip("ray")
    cfg = write_config(tmp_path / "c.yaml")
    proc = holder(tmp_path / "run")
    try:
        done = run(["train", str(cfg), "--backend", "ray", "--workers", "1",
                    "--run-dir", str(tmp_path / "run")], timeout=120)
    finally:
        proc.communicate("", timeout=30)
    assert done.returncode == 2, done.stderr
    assert f"is in use by pid {proc.pid}" in done.stderr
    assert "Started a local Ray instance" not in done.stderr


def test_a_run_directory_claimed_and_left_unused_is_removed(tmp_path):
    RunDirLock.claim(tmp_path / "fresh").release()
    assert not (tmp_path / "fresh").exists()
    kept = RunDirLock.claim(tmp_path / "used")
    (tmp_path / "used" / "metrics.jsonl").write_text("{}\n")
    kept.release()
    assert (tmp_path / "used" / "metrics.jsonl").exists()
