"""Bucketed allreduce overlapped with the backward pass (train/buckets.py, exact_overlap.py):
the bucket plan, the same bits as the step without overlap (plain and invariant, with L2 and
with L2 + L1, gradient accumulation, BatchNorm, a frozen prefix), and under `mpiexec -n 2` the
first bucket started before the backward pass ends."""

from __future__ import annotations

import json
from itertools import pairwise

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.nn import Sequential
from distnn.optim import make_optimizer
from distnn.train.buckets import BLOCK, layer_ranges, plan
from distnn.train.invariant import InvariantStep
from distnn.train.step import EXTRA_SLOTS, DataParallelStep
from tests.comm.mpi_helpers import run_module

SPEC = [{"type": "conv", "filters": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "size": 2},
        {"type": "conv", "filters": 16, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 64}, {"type": "relu"},
        {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 10}]
BN = [*SPEC[:1], {"type": "batchnorm"}, *SPEC[1:]]
SHAPE = (8, 8, 1)
SMALL_MB = 0.01  # buckets of 2,560 float32: several per model


def model_of(spec, frozen=()):
    model = Sequential(spec, SHAPE, seed=3, extra_grad_slots=EXTRA_SLOTS)
    if frozen:
        model.freeze(frozen)
    return model


@pytest.mark.parametrize("mb", [SMALL_MB, 0.05, 100.0])
@pytest.mark.parametrize("frozen", [(), ("conv0",)])
def test_plan_covers_the_region_in_blocks_from_its_end(mb, frozen):
    model = model_of(SPEC, frozen)
    size = model.params.size - model.train_offset
    buckets = plan(model, EXTRA_SLOTS, mb * 1e6, 4)
    assert buckets[0].hi == size + EXTRA_SLOTS and buckets[-1].lo == 0
    for a, b in pairwise(buckets):  # neighbours final at the same layer are one bucket
        assert a.lo == b.hi and a.lo % BLOCK == 0 and a.ready > b.ready
    ranges = layer_ranges(model)
    for b in buckets:  # ready: the lowest layer with parameters in the bucket
        inside = [i for i, first, end in ranges if first < min(b.hi, size) and end > b.lo]
        assert b.ready == min(inside)
    assert len(buckets) == 1 if mb >= 1 else len(buckets) >= 2
    assert min(i for i, _, _ in ranges) == model.backward_stop


def batch(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, *SHAPE)).astype(np.float32), rng.integers(0, 10, n))


def run_steps(step, model, steps=3, n=24):
    losses = []
    for t in range(steps):
        x, y = batch(n, t)
        res = step(x, y, n, 0.05, False, step=t, indices=np.arange(n) + t * n)
        losses.append((res.loss, res.correct, res.count))
    return model.params.copy(), losses


@pytest.mark.parametrize("spec", [SPEC, BN], ids=["plain", "batchnorm"])
# n = 1: one micro-batch; l1 > 0: the elastic net (L1 beside the L2)
@pytest.mark.parametrize("accum, n, l1", [(1, 24, 0.0), (3, 24, 0.0), (3, 1, 0.0),
                                          (1, 24, 1e-3), (3, 24, 1e-3)])
@pytest.mark.parametrize("frozen", [(), ("conv0",)])
def test_plain_step_overlapped_gives_the_same_bits(spec, accum, n, l1, frozen):
    out = []
    for mb in (None, SMALL_MB):
        model = model_of(spec, frozen)
        step = DataParallelStep(model, make_optimizer("momentum", mu=0.9),
                                create_communicator("local"), l2=1e-3, grad_accum=accum,
                                seed=1, bucket_mb=mb, l1=l1)
        run_steps(step, model, steps=1)  # a step of 24 first: what is left in the buffers
        out.append(run_steps(step, model, n=n))
    assert np.array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


@pytest.mark.parametrize("spec", [SPEC, BN], ids=["plain", "batchnorm"])
@pytest.mark.parametrize("accum, l1", [(1, 0.0), (2, 0.0), (2, 1e-3)])
def test_invariant_step_overlapped_gives_the_same_bits(spec, accum, l1):
    out = []
    for mb in (None, SMALL_MB):
        model = model_of(spec)
        step = InvariantStep(model, make_optimizer("sgd"), create_communicator("local"),
                             l2=1e-3, grad_accum=accum, groups=4, seed=1, bucket_mb=mb, l1=l1)
        out.append(run_steps(step, model))
    assert np.array_equal(out[0][0], out[1][0])
    assert out[0][1] == out[1][1]


def test_on_two_mpi_ranks_buckets_start_during_backward_and_bits_match():
    """Under mpiexec -n 2 (tests/train/overlap_job.py): for the plain and the invariant step,
    with and without BatchNorm, the overlapped step gives the non-overlapped step's
    parameters and losses to the bit, and the first bucket's allreduce started before the
    backward pass had finished its last layer."""
    out = run_module(2, "tests.train.overlap_job", timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    lines = [json.loads(s) for s in out.stdout.splitlines() if s.startswith("{")]
    assert len(lines) == 4, out.stdout + out.stderr
    for line in lines:
        assert line["same"] and line["started_during_backward"], line
        assert line["buckets"] > 2, line
