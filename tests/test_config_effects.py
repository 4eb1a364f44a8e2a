"""Issue 20: every non-default config setting that changes behaviour has its documented effect.

Each test trains in this process (local communicator, a tiny HDF5 dataset, a dense model) and
checks what the setting does against an expectation the test computes itself in float64 from
the documented formula. The harness (spies that only watch and call through) is
tests/config_harness.py. This file holds the train / early_stopping / checkpoint / comm /
top-level keys; the optimizer and schedule keys are in tests/optim/test_update_formulas.py,
the data keys in tests/data/test_augment_values.py.
Not here: the cadence, divergence and clipping keys (tests/train/test_guards.py,
test_bookkeeping.py), and comm.workers / comm.max_failures, which only the Ray driver reads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from distnn import cli
from distnn.comm import LocalCommunicator
from distnn.exit_codes import ExitCode
from distnn.launch import commands
from distnn.launch.rundir import resolve_run
from distnn.launch.worker import Outcome
from distnn.train.checkpoint import load_checkpoint
from distnn.train.run import TrainResult
from tests.config_harness import (
    CONV,
    DENSE,
    MOMENTUM,
    Recorder,
    close,
    dense_wb,
    hinge_reference,
    make_config,
    read_h5,
    run,
    softmax_reference,
    toy_h5,
)
from tests.train.runs import metrics


@pytest.fixture
def rec(monkeypatch) -> Recorder:
    return Recorder(monkeypatch)


@pytest.fixture
def data(tmp_path) -> Path:
    return toy_h5(tmp_path)


# -- train ---------------------------------------------------------------------------------------
def test_loss_svm_trains_and_scores_with_the_hinge_loss(tmp_path, data, rec):
    result, rd = run(tmp_path, data, train={"epochs": 1, "global_batch": 40, "loss": "svm"},
                     data={"normalize": False})
    (step,) = rec.steps
    w, b = dense_wb(result.model, step.before)
    loss, dw, db = hinge_reference(step.x, step.y, w, b)
    assert step.loss == pytest.approx(loss, rel=1e-5)
    gw, gb = dense_wb(result.model, step.grads)
    close(gw, dw)
    close(gb, db)
    w1, b1 = dense_wb(result.model, step.after)
    images, labels = read_h5(data, "test")
    test_line = metrics(rd)[-1]
    assert test_line["split"] == "test"
    assert test_line["loss"] == pytest.approx(hinge_reference(images / 255.0, labels, w1, b1)[0],
                                              rel=1e-5)
    assert softmax_reference(step.x, step.y, w, b)[0] != pytest.approx(loss, rel=1e-3)


def test_l2_adds_l2_w_to_weight_gradients_only_and_half_l2_w2_to_the_loss(tmp_path, data, rec):
    l2 = 0.25
    result, rd = run(tmp_path, data, train={"epochs": 2, "global_batch": 40, "l2": l2},
                     data={"normalize": False}, schedule={"base_lr": 0.2})
    assert len(rec.steps) == 2
    for step in rec.steps:  # the second starts from non-zero biases
        w, b = dense_wb(result.model, step.before)
        loss, dw, db = softmax_reference(step.x, step.y, w, b)
        assert step.loss == pytest.approx(loss + 0.5 * l2 * (w ** 2).sum(), rel=1e-5)
        gw, gb = dense_wb(result.model, step.grads)
        close(gw, dw + l2 * w)
        close(gb, db)  # biases are not decayed
        w1, b1 = dense_wb(result.model, step.after)  # sgd: x -= lr * (data gradient + l2 W)
        close(w1, w - 0.2 * (dw + l2 * w))
        close(b1, b - 0.2 * db)
    assert np.abs(b).min() > 1e-3
    # Evaluation reports the data loss alone, without the penalty.
    images, labels = read_h5(data, "test")
    assert metrics(rd)[-1]["loss"] == pytest.approx(
        softmax_reference(images / 255.0, labels, w1, b1)[0], rel=1e-5)


def test_grad_accum_splits_each_batch_evenly_and_equals_one_pass(tmp_path, data, monkeypatch):
    finals = {}
    for accum in (1, 3):
        rec = Recorder(monkeypatch)
        # The plain step (the invariant one: tests/train/test_invariant_step.py).
        result, _ = run(tmp_path, data, f"accum{accum}", train={"grad_accum": accum},
                        optimizer={"name": "momentum", "mu": 0.9})
        finals[accum] = (result.model.params.copy(), [s.loss for s in rec.steps])
        sizes = [n for n, _ in rec.micro]
        # 40 samples in batches of 16, 16, 8 per epoch; micro-batches the first ones longer.
        assert sizes == ([16, 16, 8] * 2 if accum == 1 else [6, 5, 5, 6, 5, 5, 3, 3, 2] * 2)
        monkeypatch.undo()
    close(finals[3][0], finals[1][0], rtol=1e-5, atol=1e-6)
    close(finals[3][1], finals[1][1], rtol=1e-5, atol=0)


def test_threads_sets_the_conv_thread_count_and_changes_no_bit(tmp_path, data, monkeypatch):
    finals, seen = {}, {}
    for threads in (1, 2, 0):
        rec = Recorder(monkeypatch)
        result, _ = run(tmp_path, data, f"threads{threads}", model=CONV,
                        train={"epochs": 1, "threads": threads})
        finals[threads] = result.model.params.copy()
        seen[threads] = {t for _, t in rec.micro}
        monkeypatch.undo()
    assert seen == {1: {1}, 2: {2}, 0: {max(1, os.cpu_count() or 1)}}  # 0: cores / 1 rank
    assert np.array_equal(finals[2], finals[1]) and np.array_equal(finals[0], finals[1])


def test_epochs_and_global_batch_set_the_steps_and_batches(tmp_path, data, rec):
    _, rd = run(tmp_path, data, train={"epochs": 3, "global_batch": 16})
    assert [len(s.y) for s in rec.steps] == [16, 16, 8] * 3
    assert [s.count for s in rec.steps] == [16, 16, 8] * 3  # the loss divides by these
    for epoch in range(3):
        seen = np.concatenate([b.indices for b in rec.batches if b.epoch == epoch])
        assert sorted(seen.tolist()) == list(range(40))  # every sample once per epoch
    assert [(m["epoch"], m["step"]) for m in metrics(rd) if m["split"] == "train"] == [
        (0, 3), (1, 6), (2, 9)]


def test_seed_fixes_initialisation_and_order(tmp_path, data, rec):
    a, _ = run(tmp_path, data, "a", seed=5, train={"epochs": 1})
    b, _ = run(tmp_path, data, "b", seed=5, train={"epochs": 1})
    c, _ = run(tmp_path, data, "c", seed=6, train={"epochs": 1})
    assert np.array_equal(a.model.params, b.model.params)
    starts = [s.before for s in rec.steps[::3]]
    assert np.array_equal(starts[0], starts[1]) and not np.array_equal(starts[0], starts[2])
    orders = [np.concatenate([b.indices for b in rec.batches[i:i + 3]]) for i in (0, 3, 6)]
    assert np.array_equal(orders[0], orders[1]) and not np.array_equal(orders[0], orders[2])
    assert not np.array_equal(a.model.params, c.model.params)


def test_name_names_the_run_directory(tmp_path, data, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rd, start, held = resolve_run(None, None, make_config(data, name="exp.7_b"),
                                  LocalCommunicator(), lock=False)
    assert rd.parent == Path("runs") and start is None and held is None
    assert rd.name.startswith("exp.7_b-") and len(rd.name) == len("exp.7_b-20250101-120000")


# -- early_stopping and checkpoint ----------------------------------------------------------------
def simulate_early(values, mode, patience, min_delta):
    """The documented rule: a value improves when it beats the best by more than min_delta;
    training stops after more than `patience` validations in a row without improvement.
    Returns (best value, its epoch, the epochs that improved, the last epoch trained)."""
    best, best_epoch, bad, improved = None, -1, 0, []
    for epoch, v in enumerate(values):
        if best is None or (v < best - min_delta if mode == "min" else v > best + min_delta):
            best, best_epoch, bad = v, epoch, 0
            improved.append(epoch)
        else:
            bad += 1
        if bad > patience:
            return best, best_epoch, improved, epoch
    return best, best_epoch, improved, len(values) - 1


def val_lines(rd: Path) -> list[dict]:
    return [m for m in metrics(rd) if m["split"] == "val"]


def weights(path: Path) -> np.ndarray:
    return np.concatenate([v.ravel() for v in load_checkpoint(path).model.values()])


def model_weights(result: TrainResult) -> np.ndarray:
    return np.concatenate([v.ravel() for v in result.model.state_dict().values()])




@pytest.mark.parametrize("monitor,mode", [("val_accuracy", "max"), ("val_loss", "max"),
                                          ("val_accuracy", "min"), ("val_loss", "min")])
def test_monitor_and_mode_pick_the_best_checkpoint(tmp_path, data, monitor, mode):
    result, rd = run(tmp_path, data, train={"epochs": 6}, optimizer=MOMENTUM,
                     early_stopping={"enabled": True, "monitor": monitor, "mode": mode,
                                     "patience": 10})
    key = "loss" if monitor == "val_loss" else "accuracy"
    values = [m[key] for m in val_lines(rd)]
    best, best_epoch, _, _ = simulate_early(values, mode, 10, 0.0)
    # The curve has different best epochs for the four choices (precondition of the test).
    assert best_epoch == {("val_accuracy", "max"): 1, ("val_loss", "max"): 0,
                          ("val_accuracy", "min"): 3, ("val_loss", "min"): 2}[monitor, mode]
    snap = load_checkpoint(rd / "checkpoints" / "best.h5")
    assert snap.epoch == best_epoch + 1  # written once its epoch is done
    assert snap.coordinator["early"]["best"] == best
    assert np.array_equal(model_weights(result), weights(rd / "checkpoints" / "best.h5"))


@pytest.mark.parametrize("patience,min_delta", [(1, 0.0), (1, 0.15), (0, 0.0), (2, 0.05)])
def test_patience_and_min_delta_decide_when_training_stops(tmp_path, data, patience, min_delta):
    _, rd = run(tmp_path, data, train={"epochs": 8}, optimizer=MOMENTUM,
                early_stopping={"enabled": True, "patience": patience, "min_delta": min_delta})
    losses = [m["loss"] for m in val_lines(rd)]
    # Replaying the rule on the same curve: the run ends exactly where it says.
    _, best_epoch, _, last = simulate_early(losses, "min", patience, min_delta)
    assert len(losses) == last + 1 < 8
    assert load_checkpoint(rd / "checkpoints" / "best.h5").epoch == best_epoch + 1


def test_enabled_false_trains_every_epoch_and_keeps_the_last_weights(tmp_path, data):
    stop = {"patience": 0, "min_delta": 100.0}  # nothing after epoch 0 counts as better
    on, rd_on = run(tmp_path, data, "on", train={"epochs": 4},
                    early_stopping={"enabled": True, **stop})
    off, rd_off = run(tmp_path, data, "off", train={"epochs": 4},
                      early_stopping={"enabled": False, **stop})
    assert len(val_lines(rd_on)) == 2 and len(val_lines(rd_off)) == 4
    assert np.array_equal(model_weights(on), weights(rd_on / "checkpoints" / "best.h5"))
    assert np.array_equal(model_weights(off), weights(rd_off / "checkpoints" / "last.h5"))
    assert not np.array_equal(model_weights(off), weights(rd_off / "checkpoints" / "best.h5"))


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_best_keeps_exactly_the_newest_n_bests(tmp_path, data, keep):
    _, rd = run(tmp_path, data, train={"epochs": 5}, checkpoint={"keep_best": keep},
                early_stopping={"enabled": True, "patience": 10})
    _, _, improved, _ = simulate_early([m["loss"] for m in val_lines(rd)], "min", 10, 0.0)
    assert len(improved) == 5  # every epoch improves on this curve: 5 bests to choose from
    folder = rd / "checkpoints"
    names = ["best.h5"] + [f"best-{i}.h5" for i in range(2, keep + 1)]
    assert sorted(p.name for p in folder.glob("best*.h5")) == sorted(names)
    # best.h5 the newest best, best-2.h5 the one before, ...
    assert [load_checkpoint(folder / n).epoch for n in names] == [
        e + 1 for e in improved[::-1][:keep]]


# -- comm (in-process: local backend) --------------------------------------------------------------
@pytest.mark.parametrize("backend,launcher_size,expect", [
    ("local", "4", "local"), ("mpi", None, "mpi"), ("auto", "4", "mpi"), ("auto", None, "local")])
@pytest.mark.parametrize("timeout,expect_timeout", [(12.5, 12.5), (0, None), (None, 300.0)])
def test_comm_backend_and_timeout_reach_the_communicator(tmp_path, monkeypatch, backend,
                                                         launcher_size, expect, timeout,
                                                         expect_timeout):
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "PMIX_RANK"):
        monkeypatch.delenv(var, raising=False)
    if launcher_size:
        monkeypatch.setenv("PMI_SIZE", launcher_size)
    made, given = [], []

    def fake_create(name, **opts):  # never a real MPI communicator in this process
        made.append((name, opts))
        return LocalCommunicator(**opts)

    def fake_worker(cfg, comm, run_dir, resume):
        given.append(comm)
        return Outcome(ExitCode.OK, None, None)

    monkeypatch.setattr(commands.signals, "hold_for_process", lambda: None)
    monkeypatch.setattr(commands, "create_communicator", fake_create)
    monkeypatch.setattr(commands, "run_worker", fake_worker)
    comm_section = {"backend": backend} | ({} if timeout is None else {"timeout": timeout})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": DENSE, "comm": comm_section}))
    assert cli.main(["train", str(path), "--run-dir", str(tmp_path / "rd")]) == 0
    assert made == [(expect, {"timeout": expect_timeout})]
    assert len(given) == 1 and given[0].timeout == expect_timeout
