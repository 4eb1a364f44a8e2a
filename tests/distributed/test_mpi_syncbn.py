"""SyncBatchNorm under real `mpiexec -n 2`: the gradient two ranks compute together is the
one-process gradient of the concatenated batch, and a central-difference check of the global
loss agrees with it (float64), for the plain step and the invariant one."""

import json
import subprocess
import sys

import pytest

from tests.train.runs import env, mpiexec

SCRIPT = r'''
import json, sys
import numpy as np
from distnn.comm import create_communicator
from distnn.data import ShardSampler
from distnn.nn import Sequential
from distnn.optim import make_optimizer
from distnn.train.invariant import InvariantStep
from distnn.train.step import EXTRA_SLOTS, DataParallelStep

SPECS = [{"type": "conv", "filters": 3, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
         {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "units": 4},
         {"type": "batchnorm", "momentum": 0.5}, {"type": "dense", "units": 5}]
kind = sys.argv[1]
comm = create_communicator("mpi", timeout=60)
rng = np.random.default_rng(1)
X = rng.standard_normal((24, 6, 6, 2)) * 3 + 1
Y = rng.integers(0, 5, 24)
model = Sequential(SPECS, (6, 6, 2), seed=7, dtype=np.float64, extra_grad_slots=EXTRA_SLOTS)
if kind == "plain":
    step = DataParallelStep(model, make_optimizer("sgd"), comm, grad_accum=2)
    sampler = ShardSampler(24, 24, comm.rank, comm.size, 0, shuffle=False, accum=2)
else:
    step = InvariantStep(model, make_optimizer("sgd"), comm, grad_accum=2, groups=4)
    sampler = ShardSampler(24, 24, comm.rank, comm.size, 0, shuffle=False, groups=4, accum=2)
idx = sampler.local_indices(0)

def loss_and_grads():
    before = model.state.copy()
    res = step(X[idx], Y[idx], 24, 0.0, False, apply=False, indices=idx)
    model.state[...] = before
    return res.loss, model.grads.copy()

loss, grads = loss_and_grads()
# One process, the whole batch, as two micro-batches of 12 (grad_accum=2 means the statistics of
# each global micro-batch, samples 0-11 and 12-23, under either step).
ref = Sequential(SPECS, (6, 6, 2), seed=7, dtype=np.float64)
parts = [np.arange(0, 12), np.arange(12, 24)]
want, want_loss = np.zeros_like(ref.grads), 0.0
for part in parts:
    value, _ = ref.forward_backward(X[part], Y[part], denom=24)
    want += ref.grads
    want_loss += value
numeric = []
for i in np.random.default_rng(0).choice(model.params.size, 25, replace=False):
    old = model.params[i]
    model.params[i] = old + 1e-6
    up, _ = loss_and_grads()
    model.params[i] = old - 1e-6
    down, _ = loss_and_grads()
    model.params[i] = old
    numeric.append(abs((up - down) / 2e-6 - grads[i]) / max(1.0, abs(grads[i])))
if comm.rank == 0:
    print(json.dumps({"grad_err": float(np.abs(grads - want).max() / np.abs(want).max()),
                      "loss_err": abs(loss - want_loss), "numeric_err": max(numeric)}))
'''


@pytest.mark.parametrize("kind", ["plain", "invariant"])
def test_sync_batchnorm_on_two_ranks_is_the_one_process_gradient(tmp_path, kind):
    script = tmp_path / "syncbn.py"
    script.write_text(SCRIPT)
    out = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script), kind],
                         capture_output=True, text=True, timeout=120, env=env())
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["grad_err"] < 1e-12 and got["loss_err"] < 1e-12, got
    assert got["numeric_err"] < 1e-6, got
