"""Cadences greater than 1 (issue 20, part 2): at exactly which steps a run validates, writes
and prunes checkpoints, checks its replicas and stops, against the step numbers written out
from the config (10 samples, batch 4: 3 steps per epoch, the last one a partial batch).

- train.eval_every_steps=k: a validation after every step that is a multiple of k, besides the
  one of every epoch end (a multiple of k at an epoch end is validated once);
- checkpoint.every_steps=k: step files at multiples of k; checkpoint.every_epochs=m: at the end
  of every m-th epoch; the finished state is always written; keep_last: the newest n remain;
- train.max_steps=n: the run's last step is n (a partial epoch is logged as an epoch);
- train.consistency_every=k: the replicas' checksum is compared (a max/min allreduce) after
  steps k, 2k, ..., and a mismatch there stops the run naming the step.
"""

from __future__ import annotations

import numpy as np
import pytest

from distnn.comm.local import LocalCommunicator
from distnn.train.errors import ReplicaMismatch
from tests.train import tiny

N, BATCH, SPE = 10, 4, 3  # SPE = ceil(N / BATCH)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return tiny.make_data(tmp_path_factory.mktemp("data"), N, 6)


def go(data, run_dir, epochs=3, comm=None, **sections):
    train = {"epochs": epochs, "global_batch": BATCH, **sections.pop("train", {})}
    tiny.run(tiny.config(data, train=train, **sections), run_dir, comm)
    return run_dir


def multiples(k, last):
    return set(range(k, last + 1, k))


def epoch_ends(epochs):
    return {SPE * (e + 1) for e in range(epochs)}


# -- validation ----------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4, 7])
def test_eval_every_steps_validates_at_exactly_the_multiples_of_k(tmp_path, data, k):
    rd = go(data, tmp_path / "run", train={"eval_every_steps": k})
    want = sorted(multiples(k, 3 * SPE) | epoch_ends(3))
    assert [m["step"] for m in tiny.lines(rd, "val")] == want
    assert [m["step"] for m in tiny.lines(rd, "train")] == sorted(epoch_ends(3))


def test_a_mid_epoch_validation_scores_the_parameters_of_that_step(tmp_path, data):
    rd = go(data, tmp_path / "run", train={"eval_every_steps": 2},
            checkpoint={"every_steps": 1}, schedule={"base_lr": 2.0})
    files = tiny.step_files(rd)
    for m in tiny.lines(rd, "val"):
        w, b = tiny.weights(files[m["step"]])
        assert m["loss"] == pytest.approx(
            float(tiny.losses(w, b, data.x_test, data.y_test).mean()), rel=1e-5), m


# -- checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 2, 4])
def test_every_steps_writes_at_the_multiples_of_k_and_the_epoch_ends(tmp_path, data, k):
    rd = go(data, tmp_path / "run", checkpoint={"every_steps": k})
    files = tiny.step_files(rd)
    assert sorted(files) == sorted(multiples(k, 3 * SPE) | epoch_ends(3))
    for step, path in files.items():  # each file holds the state of the step it names
        state = tiny.coordinator(path)
        assert (state["step"], state["epoch"], state["step_in_epoch"]) == (
            step, step // SPE, step % SPE)


# checkpoint.every_steps once skipped a multiple of k on an epoch end, expecting every_epochs
# to write there.
@pytest.mark.parametrize("every_steps, every_epochs, want", [
    (2, 0, [2, 4, 6, 8, 9]),  # 6 is epoch 1's end
    (3, 2, [3, 6, 9]),  # 3 is epoch 0's end, where every_epochs is not due
])
def test_every_steps_writes_every_multiple_whatever_every_epochs(tmp_path, data, every_steps,
                                                                 every_epochs, want):
    rd = go(data, tmp_path / "run", checkpoint={"every_steps": every_steps,
                                                "every_epochs": every_epochs})
    # The multiples of k up to 9, and 9, the finished state.
    assert sorted(tiny.step_files(rd)) == want


def test_every_steps_when_it_never_meets_an_epoch_end_without_epoch_checkpoints(tmp_path,
                                                                                 data):
    rd = go(data, tmp_path / "run", epochs=2, checkpoint={"every_steps": 4, "every_epochs": 0})
    assert sorted(tiny.step_files(rd)) == [4, 6]  # 4, and 6, the finished state


@pytest.mark.parametrize("epochs, want", [(5, [6, 12, 15]), (4, [6, 12])])
def test_every_epochs_2_writes_at_the_end_of_every_second_epoch(tmp_path, data, epochs, want):
    rd = go(data, tmp_path / "run", epochs=epochs, checkpoint={"every_epochs": 2})
    # Epochs 1 and 3 (0-based) end at steps 6 and 12; the finished state (15) is always kept.
    assert sorted(tiny.step_files(rd)) == want


@pytest.mark.parametrize("keep", [1, 3])
def test_keep_last_keeps_exactly_the_newest(tmp_path, data, keep):
    rd = go(data, tmp_path / "run", epochs=2, checkpoint={"every_steps": 1, "keep_last": keep})
    files = tiny.step_files(rd)
    assert sorted(files) == list(range(2 * SPE - keep + 1, 2 * SPE + 1))
    assert (rd / "checkpoints" / "last.h5").samefile(files[2 * SPE])


# -- max_steps -----------------------------------------------------------------------------------
@pytest.mark.parametrize("max_steps, train_lines", [
    (7, [(0, 3), (1, 6), (2, 7)]),  # stops in epoch 2: its one step is logged as that epoch
    (6, [(0, 3), (1, 6)]),  # on an epoch end: nothing more
    (2, [(0, 2)]),  # inside the first epoch
])
def test_max_steps_stops_at_exactly_that_step(tmp_path, data, max_steps, train_lines):
    rd = go(data, tmp_path / "run", epochs=5, train={"max_steps": max_steps},
            checkpoint={"every_steps": 1})
    assert [(m["epoch"], m["step"]) for m in tiny.lines(rd, "train")] == train_lines
    assert [m["step"] for m in tiny.lines(rd, "val")] == [s for _, s in train_lines]
    assert [m["step"] for m in tiny.lines(rd, "test")] == [max_steps]
    assert max(tiny.step_files(rd)) == max_steps
    assert tiny.coordinator(rd / "checkpoints" / "last.h5")["step"] == max_steps
    # The partial epoch's line scores its own samples: with max_steps 7, epoch 2's first batch
    # of 4, with the weights of step 6.
    if max_steps == 7:
        idx = tiny.batches(N, BATCH, 2)[0]
        w, b = tiny.weights(tiny.step_files(rd)[6])
        right = int(tiny.correct(w, b, data.x_train[idx], data.y_train[idx]).sum())
        assert tiny.lines(rd, "train")[-1]["accuracy"] == pytest.approx(right / 4, abs=1e-12)
        assert tiny.lines(rd, "train")[-1]["loss"] == pytest.approx(
            float(tiny.losses(w, b, data.x_train[idx], data.y_train[idx]).mean()), rel=1e-5)


# -- consistency_every ---------------------------------------------------------------------------
class Recording(LocalCommunicator):
    """Notes, for every replica check (a max allreduce of [crc, -crc]), how many gradient
    allreduces (one per step: the only one-dimensional sums of more than 16 values) came
    before it; `corrupt_at`: make that check (1-based)
    see two different checksums, as if another rank's replica differed."""

    def __init__(self, corrupt_at: int = 0):
        super().__init__()
        self.steps, self.checks, self.corrupt_at = 0, [], corrupt_at

    def _allreduce(self, buf, op):
        if op == "sum" and buf.ndim == 1 and buf.size > 16:
            self.steps += 1
        elif op == "max" and buf.dtype == np.float64 and buf.shape == (2,) \
                and buf[0] == -buf[1]:
            self.checks.append(self.steps)
            if len(self.checks) == self.corrupt_at:
                buf[0] += 1.0


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_consistency_check_runs_after_exactly_the_multiples_of_k(tmp_path, data, k):
    comm = Recording()
    go(data, tmp_path / "run", comm=comm, train={"consistency_every": k})
    assert comm.steps == 3 * SPE
    assert comm.checks == (sorted(multiples(k, 3 * SPE)) if k else [])


def test_a_replica_mismatch_stops_the_run_at_that_check(tmp_path, data):
    comm = Recording(corrupt_at=2)
    with pytest.raises(ReplicaMismatch, match=r"^step 4: model replicas differ"):
        go(data, tmp_path / "run", comm=comm, train={"consistency_every": 2})
    assert comm.checks == [2, 4] and comm.steps == 4
