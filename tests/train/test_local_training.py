"""End-to-end training in one process, through the real `distnn` command."""

import json
import os

import numpy as np
import pytest

from distnn.data import get_dataset
from distnn.train.checkpoint import load_checkpoint
from tests.train.runs import (
    epoch_lines,
    metrics,
    params,
    run,
    run_with_step_fault,
    steps_per_epoch,
    write_config,
)


def test_train_writes_the_run_directory_and_evaluates(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", early_stopping={"enabled": True, "patience": 5})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 0, out.stderr
    assert "test accuracy" in out.stdout
    for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.h5", "checkpoints/best.h5"):
        assert (rd / name).exists(), name
    lines = epoch_lines(rd)
    for line in lines:
        assert {"epoch", "step", "split", "loss", "accuracy", "lr", "images_per_s"} <= set(line)
    train_lines = [m for m in lines if m["split"] == "train"]
    steps = -(-(len(get_dataset("mini_mnist", "train")) - 500) // 32)  # last batch kept
    assert len(train_lines) == 2 and train_lines[1]["step"] == 2 * steps
    assert 1e-5 < train_lines[-1]["update_ratio"] < 1e-1 and train_lines[-1]["grad_norm"] > 0
    test_line = lines[-1]
    assert test_line["split"] == "test" and test_line["accuracy"] > 0.8
    ev = run(["evaluate", str(rd / "checkpoints/best.h5"), "--json"])
    assert ev.returncode == 0, ev.stderr
    result = json.loads(ev.stdout)
    assert result["n"] == test_line["n"] and abs(result["accuracy"] - test_line["accuracy"]) < 1e-9


def test_existing_run_needs_resume_flag(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 3})
    rd = tmp_path / "run"
    assert run(["train", str(cfg), "--run-dir", str(rd)]).returncode == 0
    again = run(["train", str(cfg), "--run-dir", str(rd)])
    assert again.returncode == 2 and "--resume auto" in again.stderr


@pytest.mark.slow  # the suite's time budget: the MPI twin (test_mpi_training.py) runs by default
def test_resume_by_signal_equals_uninterrupted(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 3, "global_batch": 16})
    straight = tmp_path / "straight"
    assert run(["train", str(cfg), "--run-dir", str(straight)]).returncode == 0
    rd = tmp_path / "stopped"
    # SIGUSR1, raised by the process itself as it enters step 5 of epoch 1: that step carries
    # the stop request, so it is dropped and the state before it is checkpointed (exit 75).
    epoch, step = 1, 5
    stopped = run_with_step_fault(tmp_path, "signal.raise_signal(signal.SIGUSR1)", epoch, step,
                                  ["train", str(cfg), "--run-dir", str(rd)])
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    snap = load_checkpoint(rd / "checkpoints/last.h5")
    assert (snap.step, snap.epoch, snap.step_in_epoch) == (
        epoch * steps_per_epoch(16) + step, epoch, step)
    assert [m["split"] for m in epoch_lines(rd)] == ["train", "val"]  # epoch 0's, no test
    resumed = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = params(straight / "checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert a.keys() == b.keys()
    assert all(np.array_equal(a[k], b[k]) for k in a), "resumed run differs from uninterrupted"


def test_divergence_guard_fires_on_huge_learning_rate(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", schedule={"base_lr": 50.0})
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert out.returncode == 3
    assert "diverged" in out.stderr and "lower the learning rate" in out.stderr


@pytest.mark.parametrize("ranks", [None, 2])
def test_early_stopping_restores_best(tmp_path, ranks):
    # Monitoring val_loss with min_delta so large that no epoch after the first counts as better.
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 6},
                       early_stopping={"enabled": True, "patience": 1, "min_delta": 100.0})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)], ranks=ranks)
    assert out.returncode == 0, out.stderr
    vals = [m for m in metrics(rd) if m["split"] == "val"]
    assert len(vals) == 3  # epoch 0 best, epochs 1-2 not better, patience 1 exhausted
    best = params(rd / "checkpoints/best.h5")
    last = params(rd / "checkpoints/last.h5")
    assert not all(np.array_equal(best[k], last[k]) for k in best)
    test_line = metrics(rd)[-1]
    ev = json.loads(run(["evaluate", str(rd / "checkpoints/best.h5"), "--json"]).stdout)
    assert abs(ev["loss"] - test_line["loss"]) < 1e-6  # the final model is the best one


def test_bad_config_and_bad_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    out = run(["train", str(cfg), "--set", "train.epochs=-1"])
    assert out.returncode == 2 and "train.epochs: -1 must be > 0" in out.stderr
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(100))
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "r"), "--resume", str(bad)])
    assert out.returncode == 2 and "bad.h5" in out.stderr


def test_wrong_model_checkpoint_is_refused(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 2})
    rd = tmp_path / "run"
    assert run(["train", str(cfg), "--run-dir", str(rd)]).returncode == 0
    other = write_config(tmp_path / "d.yaml", train={"epochs": 2},
                         model=[{"type": "flatten"}, {"type": "dense", "units": 10}])
    out = run(["train", str(other), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 2 and "does not match the configured model" in out.stderr


def test_best_k_and_mid_epoch_validation(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 3, "eval_every_steps": 100},
                       checkpoint={"keep_best": 2},
                       early_stopping={"enabled": True, "monitor": "val_accuracy",
                                       "mode": "max", "patience": 5})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 0, out.stderr
    # Validation accuracy improves in at least two of the three epochs (fixed seed), so the
    # ranking has rotated: the previous best moved to best-2.h5.
    names = sorted(p.name for p in (rd / "checkpoints").iterdir())
    # checkpoint.keep_last (default 2): the step files of the last two epoch ends, and last.h5
    # a link to the newest.
    steps = -(-(len(get_dataset("mini_mnist", "train")) - 500) // 32)
    assert names == ["best-2.h5", "best.h5", "last.h5", f"step-{2 * steps:06d}.h5",
                     f"step-{3 * steps:06d}.h5"]
    assert (rd / "checkpoints/last.h5").samefile(rd / f"checkpoints/step-{3 * steps:06d}.h5")
    best, second = params(rd / "checkpoints/best.h5"), params(rd / "checkpoints/best-2.h5")
    assert not all(np.array_equal(best[k], second[k]) for k in best)
    vals = [m for m in metrics(rd) if m["split"] == "val"]
    assert len(vals) > 3  # per-epoch validations plus the every-100-steps ones
