"""Step bookkeeping against the truth (issue 20, part 2): counts, metrics and learning rates of
tiny in-process runs, checked against values this file computes on its own (the documented
rules written out, and the float64 reference model of tests/train/tiny.py), never against a
second run of the same code.

Rules pinned here, from the docs and the code's definitions:
- training keeps the last partial global batch (ShardSampler(drop_last=False)): steps per epoch
  = ceil(n / global_batch), every sample once per epoch; step t's global batch is positions
  [t*B, (t+1)*B) of the epoch's permutation, np.random.default_rng([0x5348, seed, epoch])
  (data/sampler.py); `step` counts optimizer steps (one per global batch, whatever grad_accum);
- a train line's loss is the mean of the epoch's step losses (each the mean over its batch), its
  accuracy correct / samples; val and test lines are means over samples;
- the learning rate of step t is schedule(E) * scale with E = epoch + step_in_epoch / steps (per
  step) or E = epoch (per epoch); a line records the rate at the position where it is written;
- early stopping: a value improves when it beats the best by more than min_delta; the
  (patience+1)-th epoch in a row without improvement ends the run (optim/plateau.py documents
  the same count), and the best weights are restored.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from tests.train import tiny


def steps_per_epoch(n: int, batch: int) -> int:
    return -(-n // batch)  # the last partial batch is a step of its own


FROZEN = {"base_lr": 1e-30}  # float32 weights do not move: the run scores fixed parameters


# -- steps, samples, the epoch's metrics -----------------------------------------------------------
def test_steps_and_samples_per_epoch_keep_the_last_partial_batch(tmp_path):
    n, batch, epochs = 10, 4, 2
    spe = steps_per_epoch(n, batch)  # 3: batches of 4, 4, 2
    data = tiny.make_data(tmp_path, n, 6)
    cfg = tiny.config(data, train={"epochs": epochs, "global_batch": batch},
                      checkpoint={"every_steps": 1}, schedule=FROZEN)
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    assert [(m["epoch"], m["step"]) for m in tiny.lines(rd, "train")] == [(0, 3), (1, 6)]
    assert [(m["epoch"], m["step"], m["n"]) for m in tiny.lines(rd, "val")] == [(0, 3, 6),
                                                                                 (1, 6, 6)]
    (test,) = tiny.lines(rd, "test")
    assert (test["epoch"], test["step"], test["n"]) == (epochs, epochs * spe, 6)
    files = tiny.step_files(rd)
    assert sorted(files) == list(range(1, epochs * spe + 1))
    for step, path in files.items():
        state = tiny.coordinator(path)
        epoch, within = divmod(step, spe)
        seen = min(within * batch, n)  # samples of this epoch trained on so far
        assert (state["step"], state["epoch"], state["step_in_epoch"], state["epoch_count"]) \
            == (step, epoch, within, seen), step
    # Every sample counted once per epoch: accuracy = correct / 10 of the fixed weights.
    w, b = tiny.weights(files[epochs * spe])
    right = int(tiny.correct(w, b, data.x_train, data.y_train).sum())
    assert [m["accuracy"] for m in tiny.lines(rd, "train")] == [right / n] * epochs


def test_epoch_metrics_equal_a_float64_pass_over_the_same_samples(tmp_path):
    n, batch = 12, 4  # whole batches only: the epoch loss is the mean over samples
    data = tiny.make_data(tmp_path, n, 7)
    cfg = tiny.config(data, train={"epochs": 2, "global_batch": batch}, schedule=FROZEN)
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    w, b = tiny.weights(rd / "checkpoints" / "last.h5")
    train_loss = float(tiny.losses(w, b, data.x_train, data.y_train).mean())
    train_acc = float(tiny.correct(w, b, data.x_train, data.y_train).mean())
    test_loss = float(tiny.losses(w, b, data.x_test, data.y_test).mean())
    test_right = int(tiny.correct(w, b, data.x_test, data.y_test).sum())
    for m in tiny.lines(rd, "train"):
        assert m["loss"] == pytest.approx(train_loss, rel=1e-6)
        assert m["accuracy"] == pytest.approx(train_acc, abs=1e-12)
    for m in tiny.lines(rd, "val") + tiny.lines(rd, "test"):
        assert m["loss"] == pytest.approx(test_loss, rel=1e-6)
        assert (m["accuracy"], m["n"]) == (pytest.approx(test_right / 7, abs=1e-12), 7)


def test_epoch_train_loss_with_a_partial_batch_is_the_per_sample_mean(tmp_path):
    # The 2-sample batch weighs half as much as a 4-sample one: the epoch's train loss is the
    # mean over its samples, like its accuracy (not the mean of the step losses).
    n, batch = 10, 4
    data = tiny.make_data(tmp_path, n, 6)
    cfg = tiny.config(data, train={"epochs": 2, "global_batch": batch}, schedule=FROZEN)
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    w, b = tiny.weights(rd / "checkpoints" / "last.h5")
    per_sample = tiny.losses(w, b, data.x_train, data.y_train)
    for epoch, m in enumerate(tiny.lines(rd, "train")):
        step_means = [per_sample[idx].mean() for idx in tiny.batches(n, batch, epoch)]
        assert [len(idx) for idx in tiny.batches(n, batch, epoch)] == [4, 4, 2]
        assert m["loss"] == pytest.approx(float(per_sample.mean()), rel=1e-6)
        assert m["loss"] != pytest.approx(float(np.mean(step_means)), rel=1e-4)  # they differ


def test_validation_lines_equal_an_evaluation_of_the_saved_checkpoints(tmp_path):
    n, batch, epochs = 12, 4, 5
    spe = steps_per_epoch(n, batch)
    # The test split carries no signal: the validation loss falls, then rises again.
    data = tiny.make_data(tmp_path, n, 10, seed=1, test_signal=False)
    cfg = tiny.config(data, train={"epochs": epochs, "global_batch": batch},
                      schedule={"base_lr": 3.0},
                      early_stopping={"enabled": True, "patience": 100})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    files = tiny.step_files(rd)
    assert sorted(files) == [spe * (e + 1) for e in range(epochs)]
    own = []
    for e, m in enumerate(tiny.lines(rd, "val")):
        w, b = tiny.weights(files[spe * (e + 1)])
        loss = float(tiny.losses(w, b, data.x_test, data.y_test).mean())
        right = int(tiny.correct(w, b, data.x_test, data.y_test).sum())
        assert m["step"] == spe * (e + 1)
        assert m["loss"] == pytest.approx(loss, rel=1e-5)
        assert (m["accuracy"], m["n"]) == (pytest.approx(right / 10, abs=1e-12), 10)
        own.append(loss)
    best = int(np.argmin(own))
    assert best != epochs - 1, own  # the premise: the best epoch is not the last one
    assert np.array_equal(tiny.weights(rd / "checkpoints" / "best.h5")[0],
                          tiny.weights(files[spe * (best + 1)])[0])
    assert (rd / "checkpoints" / "last.h5").samefile(files[spe * epochs])
    # The run ends with the best weights restored: the test line scores them.
    (test,) = tiny.lines(rd, "test")
    assert test["loss"] == pytest.approx(own[best], rel=1e-5)


# -- the learning rate ---------------------------------------------------------------------------
def cosine(base, total, min_lr=0.0):
    return lambda e: min_lr + (base - min_lr) * 0.5 * (1 + math.cos(math.pi * min(e / total, 1)))


def step_decay(base, drop, every):
    return lambda e: base * drop ** math.floor(Fraction(e) / Fraction(every))


def warmup(base, epochs, start):
    return lambda e: base * (start + (1 - start) * e / epochs) if e < epochs else base


SCHEDULES = {  # id: (schedule section, the formula of the rate at epoch position e)
    "step-per-epoch": ({"name": "step", "base_lr": 0.2, "drop": 0.5, "every": 1,
                        "per": "epoch"}, step_decay(0.2, 0.5, 1)),
    "step-per-step": ({"name": "step", "base_lr": 0.2, "drop": 0.5, "every": 0.5},
                      step_decay(0.2, 0.5, Fraction(1, 2))),
    "cosine-per-step": ({"name": "cosine", "base_lr": 0.3}, cosine(0.3, 3)),  # train.epochs
    "cosine-per-epoch": ({"name": "cosine", "base_lr": 0.3, "min_lr": 0.05, "per": "epoch"},
                         cosine(0.3, 3, 0.05)),
    "warmup-per-step": ({"name": "constant", "base_lr": 0.3, "warmup_epochs": 2,
                         "warmup_start_factor": 0.1}, warmup(0.3, 2, 0.1)),
    "scale-lr": ({"name": "constant", "base_lr": 0.8, "scale_lr": True, "reference_batch": 16},
                 lambda e: 0.8 * 4 / 16),  # base_lr x global_batch / reference_batch
    "scale-lr-cosine": ({"name": "cosine", "base_lr": 0.4, "scale_lr": True,
                         "reference_batch": 2}, cosine(0.4 * 4 / 2, 3)),
}


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_learning_rate_per_step_follows_the_schedule_formula(tmp_path, name):
    # Six copies of one sample: every batch's mean gradient is that sample's gradient, so each
    # step's applied rate can be read off two consecutive checkpoints (batches of 4 and 2).
    section, formula = SCHEDULES[name]
    n, batch, epochs = 6, 4, 3
    spe = steps_per_epoch(n, batch)
    per_step = section.get("per", "step") == "step"
    data = tiny.make_data(tmp_path, n, 3, same=True)
    cfg = tiny.config(data, train={"epochs": epochs, "global_batch": batch,
                                   "eval_every_steps": 1},
                      checkpoint={"every_steps": 1}, schedule=section)
    rd = tmp_path / "run"
    tiny.run(cfg, rd)

    def position(t):  # step t (0-based) -> epoch position of its rate
        epoch, within = divmod(t, spe)
        return epoch + (Fraction(within, spe) if per_step else 0)

    files = tiny.step_files(rd)
    params = [tiny.initial_weights(cfg)] + [tiny.weights(files[t]) for t in sorted(files)]
    x, y = data.x_train[:1], data.y_train[:1]
    for t in range(epochs * spe):
        grad = tiny.gradient(*params[t], x, y)
        assert tiny.applied_lr(params[t], params[t + 1], grad) == pytest.approx(
            formula(position(t)), rel=1e-4), t
    # Logged: a train or val line written after step t, mid-epoch or at an epoch's end, records
    # the rate step t was trained with (at an epoch's end: its last update's, per: step or epoch).
    for m in tiny.lines(rd, "val") + tiny.lines(rd, "train"):
        want = formula(position(m["step"] - 1))
        assert m["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), m
    assert tiny.lines(rd, "test")[0]["lr"] == pytest.approx(formula(epochs), rel=1e-12,
                                                             abs=1e-15)


# -- gradient accumulation -------------------------------------------------------------------------
@pytest.mark.parametrize("n, accum", [(8, 2), (7, 3)])
def test_grad_accum_is_one_update_of_the_whole_batch(tmp_path, n, accum):
    # One global batch of n split into `accum` micro-batches (4+4; 3+2+2): one optimizer step
    # whose update is the whole batch's mean gradient.
    data = tiny.make_data(tmp_path, n, 4)
    cfg = tiny.config(data, train={"epochs": 2, "global_batch": n, "grad_accum": accum},
                      schedule={"base_lr": 0.5})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    assert [m["step"] for m in tiny.lines(rd, "train")] == [1, 2]  # optimizer steps
    w, b = tiny.initial_weights(cfg)
    for _ in range(2):
        gw, gb = tiny.gradient(w, b, data.x_train, data.y_train)
        w, b = w - 0.5 * gw, b - 0.5 * gb
    w2, b2 = tiny.weights(rd / "checkpoints" / "last.h5")
    np.testing.assert_allclose(w2, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b2, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("accum", [1, 2])
def test_minibatch_sgd_equals_a_float64_simulation_of_the_sampler(tmp_path, accum):
    # Two epochs of batches 4, 4, 2 (each split in two with grad_accum 2): the weights after
    # every step equal plain SGD on the documented batches, mean gradient per global batch.
    n, batch, epochs, lr = 10, 4, 2, 0.7
    data = tiny.make_data(tmp_path, n, 4)
    cfg = tiny.config(data, train={"epochs": epochs, "global_batch": batch, "grad_accum": accum},
                      checkpoint={"every_steps": 1}, schedule={"base_lr": lr})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    files = tiny.step_files(rd)
    assert sorted(files) == list(range(1, epochs * steps_per_epoch(n, batch) + 1))
    w, b = tiny.initial_weights(cfg)
    step = 0
    for epoch in range(epochs):
        for idx in tiny.batches(n, batch, epoch):
            gw, gb = tiny.gradient(w, b, data.x_train[idx], data.y_train[idx])
            w, b = w - lr * gw, b - lr * gb
            step += 1
            got = tiny.weights(files[step])
            np.testing.assert_allclose(got[0], w, rtol=1e-5, atol=1e-6, err_msg=str(step))
            np.testing.assert_allclose(got[1], b, rtol=1e-5, atol=1e-6, err_msg=str(step))


# -- early stopping ------------------------------------------------------------------------------
def stops(series, mode, patience, min_delta):
    """(epoch the run stops after or None, best epoch): the documented rule, written out."""
    best, best_epoch, bad = None, -1, 0
    for epoch, value in enumerate(series):
        better = best is None or (value < best - min_delta if mode == "min"
                                  else value > best + min_delta)
        if better:
            best, best_epoch, bad = value, epoch, 0
        else:
            bad += 1
        if bad > patience:
            return epoch, best_epoch
    return None, best_epoch


@pytest.mark.parametrize("monitor, mode", [("val_loss", "min"), ("val_accuracy", "max")])
@pytest.mark.parametrize("patience", [0, 2])
def test_early_stopping_on_a_flat_metric_stops_after_patience_plus_one(tmp_path, monitor, mode,
                                                                      patience):
    data = tiny.make_data(tmp_path, 8, 5)
    cfg = tiny.config(data, train={"epochs": 10, "global_batch": 4}, schedule=FROZEN,
                      early_stopping={"enabled": True, "monitor": monitor, "mode": mode,
                                      "patience": patience})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    # Epoch 0 sets the best; epochs 1 .. patience+1 do not beat it; the last of them stops.
    assert [m["epoch"] for m in tiny.lines(rd, "val")] == list(range(patience + 2))
    assert tiny.coordinator(rd / "checkpoints" / "best.h5")["step"] == 2  # epoch 0's end


@pytest.mark.parametrize("monitor, mode, min_delta, patience, data_seed, test_signal", [
    ("val_loss", "min", 0.01, 1, 2, True),
    ("val_accuracy", "max", 0.15, 3, 3, False),  # accuracy moves in steps of 0.1 (10 samples)
])
def test_early_stopping_with_min_delta_follows_the_rule(tmp_path, monitor, mode, min_delta,
                                                        patience, data_seed, test_signal):
    spe = 3  # 12 samples, batch 4
    data = tiny.make_data(tmp_path, 12, 10, seed=data_seed, test_signal=test_signal)
    cfg = tiny.config(data, train={"epochs": 30, "global_batch": 4},
                      schedule={"base_lr": 3.0},
                      early_stopping={"enabled": True, "monitor": monitor, "mode": mode,
                                      "patience": patience, "min_delta": min_delta})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    vals = tiny.lines(rd, "val")
    series = [m["loss" if monitor == "val_loss" else "accuracy"] for m in vals]
    stop, best = stops(series, mode, patience, min_delta)
    assert stop == len(series) - 1, series  # it stopped where the rule stops, not before
    assert stops(series, mode, patience, 0.0)[0] != stop, series  # premise: min_delta decides
    state = tiny.coordinator(rd / "checkpoints" / "best.h5")
    assert state["step"] == spe * (best + 1)
    w, b = tiny.weights(rd / "checkpoints" / "best.h5")
    (test,) = tiny.lines(rd, "test")  # the best weights restored at the end
    assert test["loss"] == pytest.approx(
        float(tiny.losses(w, b, data.x_test, data.y_test).mean()), rel=1e-5)
