"""Holes an attacker's pass found in the hardening, each pinned on the real CLI."""

import errno

import pytest

from distnn.comm import create_communicator
from distnn.config import ConfigError, load_config
from distnn.config.loading import parse_yaml
from distnn.exit_codes import ExitCode
from distnn.launch.worker import run_worker
from distnn.train import run as run_module
from tests.train.runs import run, running, wait_for, write_config
from tests.train.test_checkpoint_integrity import flip_exponents


def finished_run(tmp_path, **sections):
    cfg = write_config(tmp_path / "c.yaml", **sections)
    rd = tmp_path / "run"
    done = run(["train", str(cfg), "--run-dir", str(rd)])
    assert done.returncode == 0, done.stderr
    return cfg, rd


def test_a_dangling_step_file_is_skipped_on_resume(tmp_path):
    cfg, rd = finished_run(tmp_path, train={"epochs": 1, "max_steps": 6},
                           checkpoint={"every_steps": 2, "keep_last": 2})
    (rd / "checkpoints" / "step-000099.h5").symlink_to(tmp_path / "nowhere.h5")
    (rd / "checkpoints" / "last.h5").unlink()
    out = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 0, out.stderr
    assert "step-000099.h5" in out.stderr and "Traceback" not in out.stderr


def test_a_corrupt_best_checkpoint_does_not_block_the_resume(tmp_path):
    short = {"train": {"epochs": 1, "max_steps": 4}}
    cfg, rd = finished_run(tmp_path, **short)
    flip_exponents(rd / "checkpoints/best.h5", "model/conv0.W", 3)
    longer = write_config(tmp_path / "l.yaml", train={"epochs": 1, "max_steps": 8})
    out = run(["train", str(longer), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 0, out.stderr
    warnings = [ln for ln in out.stderr.splitlines() if "warning" in ln]
    assert len(warnings) == 1 and "best.h5" in warnings[0] and "resuming without it" in warnings[0]


def test_a_refused_resume_leaves_the_run_directory_as_it_was(tmp_path):
    cfg, rd = finished_run(tmp_path, train={"epochs": 1, "max_steps": 4})
    before = (rd / "config.yaml").read_text()
    out = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto",
               "--set", "optimizer.name=adam"])
    assert out.returncode == 2, out.stderr
    assert (rd / "config.yaml").read_text() == before


def test_a_refused_run_leaves_no_folders_behind(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "a/b/c"),
               "--resume", str(tmp_path / "missing.h5")])
    assert out.returncode == 2, out.stderr
    assert not (tmp_path / "a").exists()


def test_a_live_run_with_checkpoints_is_named_as_the_holder(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 200},
                       checkpoint={"every_steps": 1})
    rd = tmp_path / "run"
    with running(["train", str(cfg), "--run-dir", str(rd)]) as first:
        wait_for(lambda: (rd / "checkpoints" / "last.h5").exists(), 120, "a checkpoint")
        second = run(["train", str(cfg), "--run-dir", str(rd)])
        assert second.returncode == 2
        assert f"is in use by pid {first.pid}" in second.stderr, second.stderr


def test_a_config_that_cannot_be_written_ends_with_74(tmp_path, monkeypatch):
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(run_module, "save_config", full)
    cfg = load_config(str(write_config(tmp_path / "c.yaml", train={"max_steps": 2})))
    outcome = run_worker(cfg, create_communicator("local"), str(tmp_path / "run"), None)
    assert outcome.exit_code == ExitCode.WRITE_FAILED


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", ""])
def test_a_run_name_cannot_leave_runs(name):
    with pytest.raises(ConfigError, match="is not a run name"):
        load_config(None, [f"name={name!r}" if name else "name=''"])


def test_a_key_given_twice_is_refused():
    with pytest.raises(ConfigError, match="key 'epochs' is given twice"):
        parse_yaml("train: {epochs: 2, epochs: 3}", "config x")

