"""The data-parallel step on one process: gradient accumulation, extras, replica check.

The replica check across real ranks is in tests/distributed/test_mpi_training.py."""

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.nn import Sequential
from distnn.optim import make_optimizer
from distnn.train.step import EXTRA_SLOTS, DataParallelStep, check_replicas

SPEC = [{"type": "conv", "filters": 4, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]


def make(accum):
    model = Sequential(SPEC, (8, 8, 1), seed=3, extra_grad_slots=EXTRA_SLOTS)
    comm = create_communicator("local")
    return model, DataParallelStep(model, make_optimizer("momentum", mu=0.9), comm,
                                   l2=1e-3, grad_accum=accum)


@pytest.mark.parametrize("accum", [2, 3, 7])
def test_gradient_accumulation_equals_one_big_batch(accum):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((21, 8, 8, 1)).astype(np.float32)
    y = rng.integers(0, 10, 21)
    m1, s1 = make(1)
    mk, sk = make(accum)
    for _ in range(3):
        r1 = s1(x, y, 21, 0.05, False)
        rk = sk(x, y, 21, 0.05, False)
        assert (r1.count, r1.correct) == (rk.count, rk.correct) and not rk.stop
        assert abs(r1.loss - rk.loss) < 1e-5
    np.testing.assert_allclose(mk.params, m1.params, rtol=1e-5, atol=1e-6)


def test_stop_flag_and_empty_shard():
    model, step = make(1)
    before = model.params.copy()
    res = step(np.zeros((0, 8, 8, 1), np.float32), np.zeros(0, np.int64), 32, 0.1, True)
    assert res.stop and res.count == 0 and res.loss == 0.0
    assert np.array_equal(model.params, before)  # zero gradient, zero momentum: no change


def test_replica_check_passes_on_one_rank():
    model, _ = make(1)
    check_replicas(model, create_communicator("local"), step=1)
