"""Divergence: no checkpoint of parameters that failed (or never had) the divergence check,
clipping of the global gradient norm, rollback to the newest good checkpoint."""

import re

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.nn import Sequential
from distnn.optim import make_optimizer
from distnn.train.checkpoint import load_checkpoint
from distnn.train.step import EXTRA_SLOTS, DataParallelStep, clip_grad_norm_, sum_of_squares
from tests.train.runs import epoch_lines, metrics, params, run, write_config

# Warmups to a learning rate the tiny model cannot take: it diverges after about 24 good steps,
# or, warming up faster, at step 2 (the parameters of step 1 are still sound: loss ~2.9).
WARMUP_TO_DIVERGENCE = {"base_lr": 20.0, "warmup_epochs": 0.1, "warmup_start_factor": 0.001}
JUMP_TO_DIVERGENCE = {**WARMUP_TO_DIVERGENCE, "warmup_epochs": 0.05}


def diverged_step(stderr: str) -> int:
    found = re.search(r"diverged: step (\d+): loss", stderr)
    assert found, stderr
    return int(found.group(1))


def test_nothing_is_written_when_the_first_update_explodes(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1},
                       checkpoint={"every_steps": 1}, schedule={"base_lr": 1000.0})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 3, out.stderr
    assert not (rd / "checkpoints").exists()
    assert "No checkpoint was written" in out.stderr and "checkpoints" not in out.stderr


def test_the_kept_checkpoint_passed_the_check(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 40},
                       checkpoint={"every_steps": 1, "keep_last": 3},
                       schedule=WARMUP_TO_DIVERGENCE)
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 3, out.stderr
    bad = diverged_step(out.stderr)  # the loss of the parameters after `bad` updates blew up
    assert bad > 3
    last = rd / "checkpoints/last.h5"
    assert f"The last good checkpoint is {last} (step {bad - 1})" in out.stderr
    assert load_checkpoint(last).step == bad - 1  # scored by step bad-1's loss, which passed
    assert all(np.isfinite(v).all() for v in params(last).values())
    assert sorted(p.name for p in last.parent.iterdir()) == [
        "last.h5", *(f"step-{s:06d}.h5" for s in range(bad - 3, bad))]


def test_the_final_parameters_are_checked_by_the_validation_loss(tmp_path):
    # Stop right after the update that blows up: no training step scores those parameters, the
    # epoch end's validation does, and they are not written.
    probe = write_config(tmp_path / "p.yaml", train={"epochs": 1, "max_steps": 40},
                         schedule=JUMP_TO_DIVERGENCE)
    bad = diverged_step(run(["train", str(probe), "--run-dir", str(tmp_path / "p")]).stderr)
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": bad},
                       checkpoint={"every_steps": 1}, schedule=JUMP_TO_DIVERGENCE)
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 3, out.stderr
    assert "epoch 0: validation loss" in out.stderr
    assert load_checkpoint(rd / "checkpoints/last.h5").step == bad - 1
    assert not any(m["split"] == "test" for m in metrics(rd))


def test_rollback_recovers_with_a_lower_learning_rate_and_keeps_it(tmp_path):
    train = {"epochs": 1, "max_steps": 12, "on_divergence": "rollback",
             "rollback_lr_factor": 1e-5}
    cfg = write_config(tmp_path / "c.yaml", train=train, checkpoint={"every_steps": 1},
                       schedule={"base_lr": 1000.0})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 0, out.stderr
    lines = metrics(rd)
    rollbacks = [m for m in lines if m["split"] == "rollback"]
    assert len(rollbacks) == 1, lines
    rb = rollbacks[0]
    assert rb["rollback"] == 1 and rb["to_step"] == 0 and rb["step"] == 1
    assert rb["lr_scale"] == pytest.approx(1e-5) and rb["lr"] == pytest.approx(0.01)
    assert rb["diverged_lr"] == 1000.0 and {"epoch", "loss", "accuracy", "images_per_s"} <= set(rb)
    assert "rollback 1 of 3 to step 0" in out.stderr
    train_line = [m for m in lines if m["split"] == "train"][-1]
    assert train_line["lr"] == pytest.approx(0.01) and train_line["step"] == 12
    state = load_checkpoint(rd / "checkpoints/last.h5").coordinator
    assert state["rollbacks"] == 1 and state["lr_scale"] == pytest.approx(1e-5)
    # A resume keeps the lowered rate (and the count).
    more = write_config(tmp_path / "d.yaml", train={**train, "epochs": 2, "max_steps": 16},
                        checkpoint={"every_steps": 1}, schedule={"base_lr": 1000.0})
    out = run(["train", str(more), "--run-dir", str(rd), "--resume", "auto"])
    assert out.returncode == 0, out.stderr
    resumed = [m for m in metrics(rd) if m["split"] == "train"][-1]
    assert resumed["step"] == 16 and resumed["lr"] == pytest.approx(0.01)
    assert load_checkpoint(rd / "checkpoints/last.h5").coordinator["rollbacks"] == 1


def test_rollback_goes_to_the_newest_good_checkpoint(tmp_path):
    cfg = write_config(tmp_path / "c.yaml",
                       train={"epochs": 1, "max_steps": 30, "on_divergence": "rollback",
                              "rollback_lr_factor": 0.01},
                       checkpoint={"every_steps": 1, "keep_last": 2},
                       schedule=JUMP_TO_DIVERGENCE)
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 0, out.stderr
    rb = [m for m in metrics(rd) if m["split"] == "rollback"]
    assert len(rb) == 1 and rb[0]["to_step"] == rb[0]["step"] - 1 >= 1  # not the start
    assert load_checkpoint(rd / "checkpoints/last.h5").coordinator["lr_scale"] == 0.01


def test_rollbacks_run_out_and_stop_with_exit_3(tmp_path):
    cfg = write_config(tmp_path / "c.yaml",
                       train={"epochs": 1, "max_steps": 12, "on_divergence": "rollback",
                              "max_rollbacks": 2},
                       schedule={"base_lr": 1000.0})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 3, out.stderr
    assert "lower the learning rate (2 rollback(s) did not help)" in out.stderr
    assert [m["lr"] for m in metrics(rd) if m["split"] == "rollback"] == [500.0, 250.0]


def make_step(clip: float):
    spec = [{"type": "flatten"}, {"type": "dense", "units": 10}]
    model = Sequential(spec, (4, 4, 1), seed=3, extra_grad_slots=EXTRA_SLOTS)
    return model, DataParallelStep(model, make_optimizer("sgd"), create_communicator("local"),
                                   clip_grad_norm=clip)


def test_clip_grad_norm_scales_the_global_gradient():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((16, 4, 4, 1)).astype(np.float32), rng.integers(0, 10, 16)
    free_model, free = make_step(0.0)
    huge_model, huge = make_step(1e9)
    clip_model, clipped = make_step(0.05)
    start = free_model.params.copy()
    free(x, y, 16, 0.1, False)
    huge(x, y, 16, 0.1, False)
    assert np.array_equal(free_model.params, huge_model.params)  # above the norm: untouched
    grads = free_model.grads.copy()
    norm = float(np.linalg.norm(grads.astype(np.float64)))
    assert norm > 0.05
    res = clipped(x, y, 16, 0.1, False)
    assert res.count == 16  # the metric slots travel unclipped
    np.testing.assert_allclose(clip_model.params, start - 0.1 * grads * (0.05 / norm),
                               rtol=1e-5, atol=1e-7)
    assert float(np.linalg.norm(clip_model.grads)) == pytest.approx(0.05, rel=1e-5)


def test_clip_norm_helper():
    g = np.array([3.0, 4.0, 0.0], np.float32)
    assert sum_of_squares(g) == 25.0
    assert clip_grad_norm_(g, 10.0) == 5.0 and g.tolist() == [3.0, 4.0, 0.0]
    assert clip_grad_norm_(g, 1.0) == 5.0 and g.tolist() == pytest.approx([0.6, 0.8, 0.0])


def test_rollback_after_a_failed_validation_check(tmp_path):
    # The last update blows up; the epoch end's validation catches it and rolls back to step 1,
    # from which the run redoes step 1 at the lower rate and finishes.
    cfg = write_config(tmp_path / "c.yaml",
                       train={"epochs": 1, "max_steps": 2, "on_divergence": "rollback",
                              "rollback_lr_factor": 0.01},
                       checkpoint={"every_steps": 1}, schedule=JUMP_TO_DIVERGENCE)
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)])
    assert out.returncode == 0, out.stderr
    assert "epoch 0: validation loss" in out.stderr
    splits = [(m["split"], m["step"]) for m in epoch_lines(rd)]
    assert splits == [("train", 2), ("val", 2), ("rollback", 2), ("train", 2), ("val", 2),
                      ("test", 2)]
    assert [m["to_step"] for m in metrics(rd) if m["split"] == "rollback"] == [1]
