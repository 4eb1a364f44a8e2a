"""The divergence guards at work in whole in-process runs (issue 20, part 1).

- a loss exactly at divergence_factor x the initial loss passes, one just above stops (at a
  training step and at an epoch end's validation);
- a NaN/inf loss (an overflowing forward pass) or a loss above the limit ends the run with exit
  3 (distnn/exit_codes.py DIVERGED), naming the last good checkpoint, which stays as it was;
- on_divergence: rollback goes back to the newest written checkpoint (not the start), scales the
  learning rate by rollback_lr_factor for the rest of the run, at most max_rollbacks times, and
  logs it: a metrics.jsonl line (strict JSON even for a NaN loss) and a line on stderr.

The learning rates expected are the schedule's formula written out; the weights expected come
from the float64 reference in tests/train/tiny.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.exit_codes import ExitCode
from distnn.launch.worker import run_worker
from tests.train import tiny

DIVERGED = 3  # distnn/exit_codes.py, written out: scripts depend on the number
# A linear warmup from rate 0 (start factor 0) over 10 epochs: the rate at epoch position e is
# e/10 x base_lr; with full batches (one step per epoch) epoch 0 trains at rate 0.
WARMUP_FROM_ZERO = {"warmup_epochs": 10, "warmup_start_factor": 0.0}


def warmup_lr(base, warmup_epochs, epoch):
    """Linear warmup from 0 (warmup_start_factor 0) to base over warmup_epochs."""
    return base * min(epoch / warmup_epochs, 1.0)


def worker(cfg, run_dir):
    return run_worker(cfg, create_communicator("local"), str(run_dir), None).exit_code


def test_a_loss_exactly_at_the_limit_passes_every_check_in_a_run(tmp_path, capsys):
    # One sample, the test split the same sample, a learning rate too small to move float32
    # weights: every step loss equals the initial loss bit for bit, so with factor 1 each step
    # check sits exactly on the limit. (The step's loss travels in the float32 allreduce buffer;
    # the validation loss stays float64, here just below that float32 value.)
    data = tiny.make_data(tmp_path, 1, 1, test_like_train=True)
    train = {"epochs": 3, "global_batch": 1, "divergence_factor": 1.0}
    cfg = tiny.config(data, train=train, schedule={"base_lr": 1e-30})
    assert worker(cfg, tmp_path / "at") == ExitCode.OK
    seen = {m["loss"] for m in tiny.lines(tmp_path / "at", "train")}
    assert len(seen) == 1  # the premise: one step loss value throughout
    loss = seen.pop()
    val = {m["loss"] for m in tiny.lines(tmp_path / "at", "val")}
    assert len(val) == 1 and val.pop() <= loss
    # The largest factor below 1 whose limit falls below that loss: diverged at the first check.
    factor = math.nextafter(1.0, 0.0)
    while factor * loss >= loss:
        factor = math.nextafter(factor, 0.0)
    capsys.readouterr()
    cfg = tiny.config(data, train={**train, "divergence_factor": factor},
                      schedule={"base_lr": 1e-30})
    assert worker(cfg, tmp_path / "above") == DIVERGED
    assert "diverged: step 0: loss" in capsys.readouterr().err


def test_validation_loss_exactly_at_the_limit_passes_and_just_above_stops(tmp_path, capsys):
    # One training sample; the validation split another sample with a higher loss V. With the
    # weights fixed (lr 1e-30), find a factor f with f x initial == V exactly in float64.
    for seed in range(20):
        data = tiny.make_data(tmp_path / str(seed), 1, 1, seed=seed)
        probe = tmp_path / str(seed) / "probe"
        cfg = tiny.config(data, train={"global_batch": 1, "divergence_factor": 100.0},
                          schedule={"base_lr": 1e-30})
        tiny.run(cfg, probe)
        initial, val = tiny.lines(probe, "train")[0]["loss"], tiny.lines(probe, "val")[0]["loss"]
        exact = [f for f in _neighbours(val / initial) if f * initial == val]
        if val > initial and exact:
            break
    else:
        pytest.fail("no data seed gives a factor that hits the validation loss exactly")
    f = exact[0]
    below = math.nextafter(f, 0.0)
    assert below * initial < val
    capsys.readouterr()
    train = {"global_batch": 1, "divergence_factor": f}
    cfg = tiny.config(data, train=train, schedule={"base_lr": 1e-30})
    assert worker(cfg, tmp_path / "at") == ExitCode.OK
    cfg = tiny.config(data, train={**train, "divergence_factor": below},
                      schedule={"base_lr": 1e-30})
    assert worker(cfg, tmp_path / "above") == DIVERGED
    err = capsys.readouterr().err
    assert "diverged: epoch 0: validation loss" in err
    assert "No checkpoint was written" in err
    assert not (tmp_path / "above" / "checkpoints").exists()


def _neighbours(x: float, k: int = 4) -> list[float]:
    out, lo, hi = [x], x, x
    for _ in range(k):
        lo, hi = math.nextafter(lo, 0.0), math.nextafter(hi, math.inf)
        out += [lo, hi]
    return out


def test_non_finite_loss_stops_the_run_with_exit_3(tmp_path, capsys):
    # Two dense layers and a huge rate: after the first update the scores overflow and the
    # second step's loss is NaN; a factor of 1e300 leaves only the non-finite test to fire.
    data = tiny.make_data(tmp_path, 8, 4, signal=False)
    cfg = tiny.config(data, model=tiny.DEEP, train={"epochs": 2, "divergence_factor": 1e300},
                      schedule={"base_lr": 1e25})
    # Deliberate: the overflow is this test's input. NumPy flags it (and inf - inf in the
    # softmax shift); those flags are silenced, the guard under test is what the run does next.
    with np.errstate(over="ignore", invalid="ignore"):
        code = worker(cfg, tmp_path / "run")
    assert code == DIVERGED == ExitCode.DIVERGED
    err = capsys.readouterr().err
    assert "diverged: step 1: loss nan" in err or "diverged: step 1: loss inf" in err
    assert "No checkpoint was written" in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()  # no epoch ended


def test_factor_divergence_stops_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    # Full batch: one step per epoch, checkpoints at epoch ends. The warmup gives epoch 0 the
    # rate 0 and epoch 1 a huge one: epoch 1's validation diverges; last.h5 stays at step 1.
    data = tiny.make_data(tmp_path, 8, 4, signal=False)
    cfg = tiny.config(data, train={"epochs": 3, "global_batch": 8},
                      schedule={"base_lr": 1e4, **WARMUP_FROM_ZERO})
    assert worker(cfg, tmp_path / "run") == DIVERGED
    err = capsys.readouterr().err
    last = tmp_path / "run" / "checkpoints" / "last.h5"
    assert "diverged: epoch 1: validation loss" in err
    assert f"The last good checkpoint is {last} (step 1)" in err
    assert sorted(tiny.step_files(tmp_path / "run")) == [1]
    w0, b0 = tiny.initial_weights(cfg)
    w1, b1 = tiny.weights(last)
    assert np.array_equal(w1, w0) and np.array_equal(b1, b0)  # epoch 0 ran at rate 0


# -- rollback ------------------------------------------------------------------------------------
def test_rollback_returns_to_the_newest_checkpoint_with_the_rate_times_the_factor(tmp_path,
                                                                                    capsys):
    data = tiny.make_data(tmp_path, 8, 4, signal=False)
    factor = 1e-4
    cfg = tiny.config(data, train={"epochs": 3, "global_batch": 8, "on_divergence": "rollback",
                                   "rollback_lr_factor": factor, "max_rollbacks": 1},
                      schedule={"base_lr": 1e4, **WARMUP_FROM_ZERO})
    rd = tmp_path / "run"
    assert worker(cfg, rd) == ExitCode.OK
    err = capsys.readouterr().err
    (rb,) = tiny.lines(rd, "rollback")
    lr1, lr2 = warmup_lr(1e4, 10, 1), warmup_lr(1e4, 10, 2)  # 1000, 2000
    # The update of step 1 (at lr1) blew up; epoch 1's validation (at step 2) caught it; back to
    # step 1. diverged_lr: the rate of the epoch's last update (step 1's, lr1, not the next
    # epoch's lr2); lr: the restored position's rate at the new scale.
    assert (rb["epoch"], rb["step"], rb["to_step"], rb["rollback"]) == (1, 2, 1, 1)
    assert rb["lr_scale"] == factor
    assert rb["diverged_lr"] == pytest.approx(lr1, rel=1e-12) and lr1 != lr2
    assert rb["lr"] == pytest.approx(lr1 * factor, rel=1e-12)
    assert ("epoch 1: validation loss" in err and "diverged: rollback 1 of 1 to step 1, "
            f"learning rate scaled by {factor:g}" in err)
    # The redone step 1 started from step 1's checkpoint and moved at lr1 * factor.
    files = tiny.step_files(rd)
    assert sorted(files) == [1, 2, 3]
    x, y = data.x_train, data.y_train
    p1 = tiny.weights(files[1])
    p2 = tiny.weights(files[2])
    assert tiny.applied_lr(p1, p2, tiny.gradient(*p1, x, y)) == pytest.approx(lr1 * factor,
                                                                              rel=1e-4)
    p3 = tiny.weights(files[3])  # the scale stays for the rest of the run
    assert tiny.applied_lr(p2, p3, tiny.gradient(*p2, x, y)) == pytest.approx(lr2 * factor,
                                                                              rel=1e-4)
    state = tiny.coordinator(files[3])
    assert (state["rollbacks"], state["lr_scale"]) == (1, factor)
    # Train lines: epoch 0, epoch 1 (the diverged try), epoch 1 again, epoch 2; each with the
    # rate of its epoch's last update (step t trains at warmup_lr(t)), times the scale in force.
    assert [(m["epoch"], m["step"]) for m in tiny.lines(rd, "train")] == [
        (0, 1), (1, 2), (1, 2), (2, 3)]
    assert [m["lr"] for m in tiny.lines(rd, "train")] == pytest.approx(
        [0.0, lr1, lr1 * factor, lr2 * factor], rel=1e-12)


def test_mid_epoch_rollback_goes_to_the_previous_step_not_the_start(tmp_path, capsys):
    # Mini-batches with a checkpoint after every step, a per-step warmup to a huge rate: the
    # step whose loss diverges drops its own pending checkpoint; the run goes back to the one
    # before (not to the start) and, at a rate times 1e-30, stays there.
    data = tiny.make_data(tmp_path, 12, 6, signal=False)
    cfg = tiny.config(data, train={"epochs": 3, "on_divergence": "rollback",
                                   "rollback_lr_factor": 1e-30, "max_rollbacks": 1},
                      checkpoint={"every_steps": 1},
                      schedule={"base_lr": 100.0, **WARMUP_FROM_ZERO})
    rd = tmp_path / "run"
    assert worker(cfg, rd) == ExitCode.OK
    (rb,) = tiny.lines(rd, "rollback")
    k, spe = rb["step"], 3  # 12 samples / batch 4
    assert rb["to_step"] == k - 1 and k >= 3, rb
    assert rb["diverged_lr"] == pytest.approx(warmup_lr(100.0, 10, k / spe), rel=1e-12)
    assert rb["lr"] == pytest.approx(warmup_lr(100.0, 10, (k - 1) / spe) * 1e-30, rel=1e-12)
    assert f"rollback 1 of 1 to step {k - 1}," in capsys.readouterr().err
    files = tiny.step_files(rd)
    assert sorted(files) == list(range(1, 10))
    good = tiny.weights(files[k - 1])
    before = tiny.weights(files[k - 2])
    assert np.abs(good[0] - before[0]).max() > 1e-3  # step k-1 is not step k-2 (nor the start)
    for step in range(k, 10):  # every later checkpoint continues from step k-1's weights
        w, b = tiny.weights(files[step])
        np.testing.assert_allclose(w, good[0], rtol=0, atol=1e-6)
        np.testing.assert_allclose(b, good[1], rtol=0, atol=1e-6)
        assert tiny.coordinator(files[step])["rollbacks"] == 1


def test_rollbacks_run_out_after_exactly_max_rollbacks(tmp_path, capsys):
    data = tiny.make_data(tmp_path, 8, 4, signal=False)
    cfg = tiny.config(data, train={"epochs": 3, "global_batch": 8, "on_divergence": "rollback",
                                   "rollback_lr_factor": 0.5, "max_rollbacks": 2},
                      schedule={"base_lr": 1e4, **WARMUP_FROM_ZERO})
    rd = tmp_path / "run"
    assert worker(cfg, rd) == DIVERGED
    err = capsys.readouterr().err
    rbs = tiny.lines(rd, "rollback")
    assert [(m["rollback"], m["to_step"], m["lr_scale"]) for m in rbs] == [(1, 1, 0.5),
                                                                            (2, 1, 0.25)]
    # lr: epoch 1's rate (1000) at the new scale; diverged_lr: the rate of epoch 1's last update
    # (1000), at the scale in force when it diverged.
    assert [m["lr"] for m in rbs] == pytest.approx([500.0, 250.0], rel=1e-12)
    assert [m["diverged_lr"] for m in rbs] == pytest.approx([1000.0, 500.0], rel=1e-12)
    assert "(2 rollback(s) did not help)" in err and "rollback 3" not in err
    assert sorted(tiny.step_files(rd)) == [1]  # nothing after the good checkpoint was written


def test_no_rollbacks_allowed_stops_at_the_first_divergence(tmp_path):
    data = tiny.make_data(tmp_path, 8, 4, signal=False)
    cfg = tiny.config(data, train={"epochs": 3, "global_batch": 8, "on_divergence": "rollback",
                                   "max_rollbacks": 0},
                      schedule={"base_lr": 1e4, **WARMUP_FROM_ZERO})
    assert worker(cfg, tmp_path / "run") == DIVERGED
    assert tiny.lines(tmp_path / "run", "rollback") == []


def test_rollback_after_a_nan_loss_logs_it_as_strict_json(tmp_path, capsys):
    # The first update overflows (two dense layers, rate 1e25): step 1's loss is NaN; the run
    # rolls back to its start (nothing written yet) at 1e25 x 1e-27 = 0.01 and finishes.
    data = tiny.make_data(tmp_path, 8, 4, signal=False)
    cfg = tiny.config(data, model=tiny.DEEP,
                      train={"epochs": 2, "on_divergence": "rollback",
                             "rollback_lr_factor": 1e-27, "max_rollbacks": 1},
                      schedule={"base_lr": 1e25})
    with np.errstate(over="ignore", invalid="ignore"):  # the deliberate overflow, as above
        assert worker(cfg, tmp_path / "run") == ExitCode.OK
    out = capsys.readouterr().out
    raw = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()

    def refuse(name):
        raise AssertionError(f"bare {name} in metrics.jsonl")

    records = [json.loads(line, parse_constant=refuse) for line in raw]
    (rb,) = [m for m in records if m["split"] == "rollback"]
    assert rb["loss"] in ("nan", "inf") and (rb["step"], rb["to_step"]) == (1, 0)
    assert rb["lr"] == pytest.approx(0.01) and rb["diverged_lr"] == 1e25
    assert f"rollback  loss {rb['loss']}" in out  # the printed summary line
    finals = [m for m in records if m["split"] != "rollback"]
    assert all(isinstance(m["loss"], float) and math.isfinite(m["loss"]) for m in finals)
