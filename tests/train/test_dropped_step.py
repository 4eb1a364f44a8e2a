"""A stop request that arrives with a step drops it (train/loop.py stop_before_update): no
update, BatchNorm running statistics as before its forward pass, and the state before it
checkpointed. One Coordinator step on a tiny BatchNorm model (tests/train/tiny.py)."""

from __future__ import annotations

from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.exit_codes import ExitCode
from distnn.train.loop import Coordinator
from distnn.train.metrics import MetricsLog
from distnn.train.run import build_parts
from tests.train import tiny

BN = [{"type": "batchnorm"}, {"type": "flatten"}, {"type": "dense", "units": tiny.CLASSES}]


@pytest.fixture
def setup(tmp_path):
    data = tiny.make_data(tmp_path, 12, 6)
    cfg = tiny.config(data, model=BN)
    comm = create_communicator("local")
    parts = build_parts(cfg, comm, None)
    rd = tmp_path / "run"
    coord = Coordinator(cfg, comm, parts, rd, MetricsLog(tmp_path / "metrics.jsonl", True))
    x = (data.x_train[:4].reshape(4, *tiny.SHAPE)).astype(np.float32)
    return coord, x, data.y_train[:4], rd


def running(coord) -> tuple[list[float], list[float]]:
    state = coord.model.state_dict()
    return (state["batchnorm0.running_mean"].tolist(), state["batchnorm0.running_var"].tolist())


def test_a_step_moves_the_running_statistics(setup):
    coord, x, y, _ = setup
    assert running(coord) == ([0.0], [1.0])  # BatchNorm's initial statistics
    assert coord.train_step(x, y, SimpleNamespace(raised=False)) is None
    mean, var = running(coord)
    assert mean != [0.0] and var != [1.0]


def test_a_stopped_step_is_dropped_and_the_state_before_it_checkpointed(setup):
    coord, x, y, rd = setup
    params = coord.model.params.copy()
    code = coord.train_step(x, y, SimpleNamespace(raised=True))
    assert code == ExitCode.RESUMABLE
    assert running(coord) == ([0.0], [1.0])
    np.testing.assert_array_equal(coord.model.params, params)
    assert coord.state.step == 0
    with h5py.File(rd / "checkpoints" / "last.h5", "r") as fh:
        assert np.array(fh["model/batchnorm0.running_mean"]).tolist() == [0.0]
        assert np.array(fh["model/batchnorm0.running_var"]).tolist() == [1.0]
        assert int(fh.attrs["step"]) == 0
