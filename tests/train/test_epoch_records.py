"""What the coordinator records per epoch (train/loop.py), against values computed here: the
progress bar's postfix after each step (loss, accuracy, rate, images/s), images_per_s of the
train and val lines as samples / seconds of the documented interval, the train line's update
ratio, the rate an epoch's lines report under a schedule that reads the step, the best epoch
kept in the checkpoints' early-stopping state, and the error of a failed best.h5 write.

No test depends on timing: train/loop.py's clock (`time.perf_counter`) is replaced by one that
advances TICK seconds per reading, and the bar (shown only when stderr is a terminal) by a
recorder. Tiny in-process runs with the float64 reference of tests/train/tiny.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from distnn.train import loop as loop_module
from distnn.train import run as run_module
from distnn.train.errors import CheckpointWriteError
from tests.train import tiny

TICK = 0.25  # seconds per reading of the fake clock
FROZEN = {"base_lr": 1e-30}  # float32 weights do not move


class Clock:
    def __init__(self):
        self.now = 100.0

    def perf_counter(self) -> float:
        self.now += TICK
        return self.now


class Bar:
    """Stands in for the tqdm bar; records what the loop gives it."""

    def __init__(self, total, initial, epoch, enabled, disable):
        self.args = (total, initial, epoch, enabled)
        self.disable = disable
        self.updates, self.postfixes, self.closed = 0, [], False

    def update(self, n):
        self.updates += n

    def set_postfix(self, **values):
        self.postfixes.append(values)

    def close(self):
        self.closed = True


@pytest.fixture
def clock(monkeypatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(loop_module, "time", SimpleNamespace(perf_counter=c.perf_counter))
    return c


def bars(monkeypatch, disable: bool) -> list[Bar]:
    made: list[Bar] = []

    def progress(total, initial, epoch, enabled):
        made.append(Bar(total, initial, epoch, enabled, disable))
        return made[-1]

    monkeypatch.setattr(loop_module, "progress", progress)
    return made


class StepRate:
    """A schedule that reads the step: 1e-30 x (step + 1) (lr() only, as a user's may be)."""

    def lr(self, step, epoch, metrics=None):
        return 1e-30 * (step + 1)


def step_rate(monkeypatch):
    monkeypatch.setattr(run_module, "build_schedule", lambda cfg: StepRate())


# -- the progress bar ------------------------------------------------------------------------------
def test_the_bar_postfix_after_each_step_is_the_running_epoch_mean(tmp_path, monkeypatch, clock):
    n, batch, epochs = 10, 4, 2  # batches of 4, 4, 2
    made = bars(monkeypatch, disable=False)
    step_rate(monkeypatch)
    data = tiny.make_data(tmp_path, n, 6)
    cfg = tiny.config(data, train={"epochs": epochs, "global_batch": batch})
    tiny.run(cfg, tmp_path / "run")
    w, b = tiny.initial_weights(cfg)  # the rates are ~1e-30: the weights never move
    assert [bar.args for bar in made] == [(3, 0, 0, True), (3, 0, 1, True)]
    step = 0
    for epoch, bar in enumerate(made):
        assert bar.updates == 3 and bar.closed
        loss_sum, right, count = 0.0, 0, 0
        want = []
        for idx in tiny.batches(n, batch, epoch):
            x, y = data.x_train[idx], data.y_train[idx]
            loss_sum += float(tiny.losses(w, b, x, y).sum())
            right += int(tiny.correct(w, b, x, y).sum())
            count += len(idx)
            step += 1
            want.append((loss_sum / count, right / count, f"{1e-30 * (step + 1):.3g}",
                         f"{count / (TICK * len(want) + TICK):.0f}"))
        got = bar.postfixes
        assert [sorted(p) for p in got] == [["acc", "img_s", "loss", "lr"]] * 3
        for p, (loss, acc, lr, img_s) in zip(got, want, strict=True):
            assert float(p["loss"]) == pytest.approx(loss, abs=6e-5) and len(p["loss"]) == 6
            assert p["acc"] == f"{acc:.3f}"
            assert p["lr"] == lr  # the rate of the step about to run
            assert p["img_s"] == img_s  # samples so far / TICK per step
    assert [p["img_s"] for p in made[0].postfixes] == ["16", "16", "13"]


def test_a_hidden_bar_gets_no_postfix(tmp_path, monkeypatch, clock):
    made = bars(monkeypatch, disable=True)
    data = tiny.make_data(tmp_path, 8, 6)
    tiny.run(tiny.config(data, schedule=FROZEN), tmp_path / "run")
    assert len(made) == 1 and made[0].updates == 2 and made[0].postfixes == []


# -- images_per_s ----------------------------------------------------------------------------------
def test_images_per_s_is_samples_over_the_seconds_of_steps_and_of_validation(tmp_path, clock):
    n, batch, n_val = 10, 4, 6
    data = tiny.make_data(tmp_path, n, n_val)
    rd = tmp_path / "run"
    tiny.run(tiny.config(data, train={"epochs": 2, "global_batch": batch}, schedule=FROZEN), rd)
    # Train: each of the 3 steps is one clock reading after the previous one.
    assert [m["images_per_s"] for m in tiny.lines(rd, "train")] == [n / (3 * TICK)] * 2
    # Validation: two readings, before and after the evaluation.
    assert [m["images_per_s"] for m in tiny.lines(rd, "val")] == [n_val / TICK] * 2


# -- the train line's health numbers -------------------------------------------------------------
def test_update_ratio_and_grad_norm_are_those_of_the_first_update(tmp_path):
    n, batch, lr = 8, 4, 0.1
    data = tiny.make_data(tmp_path, n, 6)
    cfg = tiny.config(data, train={"global_batch": batch}, schedule={"base_lr": lr})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    # Measured every 50 steps: here at step 0 alone, ||update|| / ||weights after it||.
    w, b = tiny.initial_weights(cfg)
    idx = tiny.batches(n, batch, 0)[0]
    gw, gb = tiny.gradient(w, b, data.x_train[idx], data.y_train[idx])
    update = lr * np.concatenate([gw.ravel(), gb])
    after = np.concatenate([w.ravel(), b]) - update
    (line,) = tiny.lines(rd, "train")
    assert line["update_ratio"] == pytest.approx(
        np.linalg.norm(update) / np.linalg.norm(after), rel=1e-4)
    assert line["grad_norm"] == pytest.approx(np.linalg.norm(update) / lr, rel=1e-4)


# -- the rate an epoch's lines report --------------------------------------------------------------
def test_an_epochs_lines_report_the_rate_of_its_last_update(tmp_path, monkeypatch):
    step_rate(monkeypatch)
    n, batch, epochs = 10, 4, 2
    data = tiny.make_data(tmp_path, n, 6)
    rd = tmp_path / "run"
    tiny.run(tiny.config(data, train={"epochs": epochs, "global_batch": batch}), rd)
    # The last update of epoch e is step 3e + 2 (0-based): its rate is 1e-30 x (3e + 3).
    for split in ("train", "val"):
        got = [m["lr"] for m in tiny.lines(rd, split)]
        assert got == pytest.approx([1e-30 * 3, 1e-30 * 6], rel=1e-12, abs=0), split


# -- best epoch, best.h5 ---------------------------------------------------------------------------
def test_checkpoints_keep_the_epoch_of_the_best_validation(tmp_path):
    data = tiny.make_data(tmp_path, 12, 6)
    cfg = tiny.config(data, train={"epochs": 4, "global_batch": 4},
                      schedule={"base_lr": 2.0}, checkpoint={"every_epochs": 1})
    rd = tmp_path / "run"
    tiny.run(cfg, rd)
    losses = [m["loss"] for m in tiny.lines(rd, "val")]
    best, best_epoch = None, -1
    for epoch, value in enumerate(losses):  # strictly better (min_delta 0) is an improvement
        if best is None or value < best:
            best, best_epoch = value, epoch
    folder = rd / "checkpoints"
    files = tiny.step_files(rd)
    for epoch in range(4):
        early = tiny.coordinator(files[3 * (epoch + 1)])["early"]
        seen = losses[:epoch + 1]
        first_min = int(np.argmin(seen))
        assert (early["best_epoch"], early["best"]) == (first_min, pytest.approx(min(seen))), epoch
    assert tiny.coordinator(folder / "best.h5")["early"]["best_epoch"] == best_epoch
    assert tiny.coordinator(folder / "best.h5")["step"] == 3 * (best_epoch + 1)


def test_a_failed_best_write_names_the_best_checkpoint(tmp_path):
    data = tiny.make_data(tmp_path, 8, 6)
    rd = tmp_path / "run"
    folder = rd / "checkpoints"
    (folder / "best.h5").mkdir(parents=True)  # a folder where best.h5 goes: the write fails
    (folder / "best.h5" / "keep").write_text("x")
    with pytest.raises(CheckpointWriteError) as err:
        tiny.run(tiny.config(data, schedule=FROZEN), rd)
    # Epoch 0 is the first best (written before last.h5): no checkpoint exists yet.
    message = str(err.value)
    assert message.startswith(f"could not write the best checkpoint of step 2 in {folder}: ")
    assert message.endswith("; no earlier checkpoint exists")
