"""Coordinator.restore: continuing from a checkpoint (train/loop.py). A resume that does not fit
the run is one CheckpointError line naming the file; one that fits puts the snapshot's state in
place, points last.h5 at a step file resumed by fallback, makes it the rollback target, and keeps
best.h5's weights for the end of the run. Tiny in-process runs (tests/train/tiny.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.exit_codes import ExitCode
from distnn.train.checkpoint import load_checkpoint, save_checkpoint
from distnn.train.errors import CheckpointError
from distnn.train.loop import Coordinator
from distnn.train.metrics import MetricsLog
from distnn.train.run import build_parts, train
from tests.train import tiny


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tiny.Data:
    return tiny.make_data(tmp_path_factory.mktemp("data"), 12, 6)


def three_steps(data, tmp_path: Path, **train_keys):
    """A finished run of 3 steps with a checkpoint after each: (config, run dir)."""
    cfg = tiny.config(data, train={"epochs": 1, "max_steps": 3, **train_keys},
                      checkpoint={"every_steps": 1})
    rd = tmp_path / "run"
    assert tiny.run(cfg, rd).exit_code == ExitCode.OK
    assert sorted(tiny.step_files(rd)) == [1, 2, 3]
    return cfg, rd


def coordinator(cfg, rd: Path, snap) -> Coordinator:
    comm = create_communicator("local")
    parts = build_parts(cfg, comm, snap)
    return Coordinator(cfg, comm, parts, rd, MetricsLog(rd / "restore-metrics.jsonl", True))


def test_restore_from_a_step_file_points_last_at_it_and_rolls_back_to_it(data, tmp_path):
    cfg, rd = three_steps(data, tmp_path, on_divergence="rollback")
    folder = rd / "checkpoints"
    source = folder / "step-000001.h5"
    assert not (folder / "last.h5").samefile(source)
    snap = load_checkpoint(source)  # data.normalize is off: no normalisation stored
    assert snap.normalization is None
    coord = coordinator(cfg, rd, snap)
    coord.restore(snap, None, source)
    assert (coord.state.step, coord.state.epoch, coord.state.step_in_epoch) == (1, 0, 1)
    for name, value in coord.model.state_dict().items():
        np.testing.assert_array_equal(value, snap.model[name])
    # The fallback step file becomes last.h5, and is what a failed write names.
    assert (folder / "last.h5").samefile(source)
    assert coord.keeper.describe_last() == (
        f"the last good checkpoint is {source}, which this run resumed from")
    # The restored state is the rollback target until a checkpoint is written.
    good = coord.keeper.good
    assert good is not None and (good.step, good.epoch, good.step_in_epoch) == (1, 0, 1)
    for name, value in good.model.items():
        np.testing.assert_array_equal(value, snap.model[name])
    assert good.coordinator["step"] == 1


def test_normalisation_of_other_channels_is_refused(data, tmp_path):
    cfg, rd = three_steps(data, tmp_path)
    snap = load_checkpoint(rd / "checkpoints" / "last.h5")
    snap.normalization = (np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32))
    odd = tmp_path / "odd.h5"
    save_checkpoint(snap, odd)
    with pytest.raises(CheckpointError) as info:
        train(cfg, create_communicator("local"), tmp_path / "again", odd)
    assert str(info.value) == f"{odd}: its normalisation has 3 channel(s), the data 1"


def test_a_model_that_does_not_fit_is_refused(data, tmp_path):
    cfg, rd = three_steps(data, tmp_path)
    snap = load_checkpoint(rd / "checkpoints" / "last.h5")
    snap.model["dense1.W"] = snap.model["dense1.W"][:-1]
    odd = tmp_path / "odd.h5"
    save_checkpoint(snap, odd)
    with pytest.raises(CheckpointError) as info:
        train(cfg, create_communicator("local"), tmp_path / "again", odd)
    assert str(info.value) == (f"{odd}: does not fit this run's model or optimizer: model "
                               f"state: dense1.W has shape (3, 3), expected (4, 3)")


def test_a_finished_resume_ends_with_the_weights_of_best_h5(data, tmp_path):
    cfg = tiny.config(data, train={"epochs": 2},
                      early_stopping={"enabled": True, "patience": 5})
    rd = tmp_path / "run"
    assert tiny.run(cfg, rd).exit_code == ExitCode.OK
    folder = rd / "checkpoints"
    best = load_checkpoint(folder / "best.h5")
    best.model = {k: v + np.float32(0.5) for k, v in best.model.items()}
    save_checkpoint(best, folder / "best.h5")  # best weights the last ones cannot be
    last = load_checkpoint(folder / "last.h5")
    result = train(cfg, create_communicator("local"), rd, folder / "last.h5")
    assert result.exit_code == ExitCode.OK
    for name, value in result.model.state_dict().items():
        np.testing.assert_array_equal(value, best.model[name])
        assert not np.array_equal(value, last.model[name])
