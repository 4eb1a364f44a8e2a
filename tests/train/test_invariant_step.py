"""The world-size invariant step (issue 12), in one process: thread ranks (tests/train/
threadcomm.py) run the real step side by side. The same parameters, to the bit, for 1 to 5
ranks; the gradient is the full batch's (SyncBatchNorm), against a float64 reference."""

import zlib

import numpy as np
import pytest

from distnn.comm import LocalCommunicator
from distnn.config import ConfigError, check_world_size, from_dict
from distnn.data import ShardSampler
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.optim import make_optimizer
from distnn.train.invariant import InvariantStep
from distnn.train.step import EXTRA_SLOTS
from tests.train.threadcomm import run_ranks

CONV_BN_DROP = [
    {"type": "conv", "filters": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
    {"type": "relu"}, {"type": "maxpool", "size": 2}, {"type": "flatten"},
    {"type": "dense", "units": 16}, {"type": "batchnorm"}, {"type": "relu"},
    {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 5},
]
N_SAMPLES, BATCH = 100, 30  # 3 full batches and one of 10 per epoch; 30 splits evenly over no 4
RNG = np.random.default_rng(1)
X = RNG.standard_normal((N_SAMPLES, 8, 8, 2)).astype(np.float32)
Y = RNG.integers(0, 5, N_SAMPLES)


def train(comm, specs=CONV_BN_DROP, accum=1, groups=8, epochs=2, l2=1e-3, dtype=np.float32):
    """Two epochs of the real step; returns (params CRC, state CRC, every step's loss)."""
    model = Sequential(specs, (8, 8, 2), seed=3, dtype=dtype, extra_grad_slots=EXTRA_SLOTS)
    step = InvariantStep(model, make_optimizer("momentum", mu=0.9), comm, l2=l2,
                         grad_accum=accum, groups=groups, seed=5)
    sampler = ShardSampler(N_SAMPLES, BATCH, comm.rank, comm.size, 0, groups=groups,
                           accum=accum)
    losses, t = [], 0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        for i in range(sampler.steps_per_epoch):
            idx = sampler.local_indices(i)
            res = step(X[idx].astype(dtype), Y[idx], len(sampler.global_indices(i)), 0.05,
                       False, step=t, indices=idx)
            losses.append((res.loss, res.correct, res.count))
            t += 1
    return zlib.crc32(model.params.tobytes()), zlib.crc32(model.state.tobytes()), losses


@pytest.mark.parametrize("accum", [1, 2])
def test_every_step_is_bit_identical_on_1_to_5_ranks(accum):
    results = {n: run_ranks(n, lambda comm: train(comm, accum=accum)) for n in range(1, 6)}
    one = results[1][0]
    for n, per_rank in results.items():
        for rank, got in enumerate(per_rank):
            assert got == one, (n, rank)
    assert [c for _, _, c in one[2]] == [30, 30, 30, 10] * 2


def test_a_float64_model_with_batchnorm_gives_the_same_bits_on_1_to_4_ranks():
    # BatchNorm sums travel in per-group slots: a rank writing another's slots shows here.
    runs = {n: run_ranks(n, lambda comm: train(comm, accum=2, epochs=1, dtype=np.float64))
            for n in (1, 2, 4)}
    assert all(got == runs[1][0] for per_rank in runs.values() for got in per_rank)


def test_thread_count_changes_no_bit():
    seen = set()
    for threads in (1, 2, 3):
        with nn_threads.limit(threads):
            seen.add(tuple(run_ranks(2, lambda comm: train(comm, epochs=1))[0][:2]))
    assert len(seen) == 1


def test_more_ranks_than_groups_is_one_clear_error():
    cfg = from_dict({"train": {"groups": 4, "invariant": True}})
    check_world_size(cfg, 4)
    with pytest.raises(ConfigError, match=r"^train.groups: 4 groups cannot be shared by 5 "
                                          r"ranks; expected train.groups >= 5"):
        check_world_size(cfg, 5)
    with pytest.raises(ValueError, match="5 ranks cannot share 4 groups"):
        ShardSampler(10, 8, 0, 5, 0, groups=4)
    # The plain step keeps its own rule: the batch must split evenly.
    check_world_size(from_dict({"train": {"invariant": False, "global_batch": 30}}), 5)
    with pytest.raises(ConfigError, match="30 does not split evenly over 4 ranks"):
        check_world_size(from_dict({"train": {"invariant": False, "global_batch": 30}}), 4)


# -- the gradient is the full batch's ---------------------------------------------------------
BN_NET = [{"type": "conv", "filters": 3, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
          {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "units": 4},
          {"type": "batchnorm"}, {"type": "dense", "units": 5}]


def one_step_grads(comm, specs, dtype, sync=True):
    specs = [dict(s, sync=sync) if s["type"] == "batchnorm" else s for s in specs]
    model = Sequential(specs, (8, 8, 2), seed=7, dtype=dtype, extra_grad_slots=EXTRA_SLOTS)
    step = InvariantStep(model, make_optimizer("sgd"), comm, groups=8)
    sampler = ShardSampler(N_SAMPLES, BATCH, comm.rank, comm.size, 0, shuffle=False,
                           groups=8)
    idx = sampler.local_indices(0)
    res = step(X[idx].astype(dtype), Y[idx], BATCH, 0.0, False, apply=False, indices=idx)
    return model.grads.copy(), res.loss, model.state.copy()


def reference(specs, parts):
    """float64: the plain layer stack on each part of the batch, gradients and losses summed
    (one part: the whole batch, SyncBatchNorm's meaning; two: per-rank statistics)."""
    model = Sequential(specs, (8, 8, 2), seed=7, dtype=np.float64)
    grads, loss = np.zeros_like(model.grads), 0.0
    for part in parts:
        value, _ = model.forward_backward(X[part].astype(np.float64), Y[part], denom=BATCH)
        grads += model.grads
        loss += value
    return grads, loss, model


def test_sync_batchnorm_gradient_is_the_whole_batch_gradient_on_any_world_size():
    want, want_loss, ref = reference(BN_NET, [np.arange(BATCH)])
    for n in (1, 2, 3):
        for grads, loss, state in run_ranks(n, lambda c: one_step_grads(c, BN_NET, np.float32)):
            np.testing.assert_allclose(grads, want, rtol=2e-4, atol=2e-6)
            assert loss == pytest.approx(want_loss, rel=1e-6)
            np.testing.assert_allclose(state, ref.state, rtol=1e-5, atol=1e-7)
    # In float64 the step agrees with the reference to float64 rounding.
    (grads, loss, _), = run_ranks(1, lambda c: one_step_grads(c, BN_NET, np.float64))
    np.testing.assert_allclose(grads, want, rtol=1e-10, atol=1e-13)


def test_batchnorm_sync_false_normalises_each_rank_share_alone():
    halves = [np.arange(0, 16), np.arange(16, 30)]  # 8 groups of 4,4,4,4,4,4,3,3: 4 per rank
    want, _, _ = reference(BN_NET, halves)
    whole, _, _ = reference(BN_NET, [np.arange(BATCH)])
    got = run_ranks(2, lambda c: one_step_grads(c, BN_NET, np.float32, sync=False))
    for grads, _, _ in got:
        np.testing.assert_allclose(grads, want, rtol=2e-4, atol=2e-6)
    assert np.abs(want - whole).max() > 1e-3  # the two meanings differ here


# -- dropout keyed by sample and step ------------------------------------------------------------
def test_dropout_masks_depend_on_the_sample_and_step_not_the_batch():
    from distnn.nn.regularize import Dropout, sample_keys

    layer = Dropout(rate=0.4)
    layer.build((50,), np.float32)
    x = np.ones((6, 50), np.float32)
    layer.keys = sample_keys(1, 3, 7, np.arange(6))
    full = layer.forward(x, True).copy()
    layer.keys = sample_keys(1, 3, 7, np.array([4, 1]))
    part = layer.forward(x[:2], True)
    np.testing.assert_array_equal(part, full[[4, 1]])
    assert set(np.unique(full)) == {0.0, np.float32(1 / 0.6)}
    layer.keys = sample_keys(1, 3, 8, np.arange(6))  # another step: other masks
    assert not np.array_equal(layer.forward(x, True), full)
    big = np.ones((400, 50), np.float32)
    layer.keys = sample_keys(2, 0, 0, np.arange(400))
    kept = np.count_nonzero(layer.forward(big, True)) / big.size
    assert abs(kept - 0.6) < 0.01  # 20000 draws: 5 standard deviations are 0.017
    np.testing.assert_array_equal(layer.backward(np.ones_like(big)), layer.forward(big, True))


def test_the_step_is_deterministic_and_l2_enters_once():
    a = run_ranks(1, lambda c: train(c, epochs=1))[0]
    b = run_ranks(1, lambda c: train(c, epochs=1))[0]
    assert a == b
    no_l2 = run_ranks(1, lambda c: train(c, epochs=1, l2=0.0))[0]
    assert no_l2[0] != a[0]


def test_one_local_rank_runs_the_step_without_thread_ranks():
    out = train(LocalCommunicator(), epochs=1)
    assert out == run_ranks(3, lambda c: train(c, epochs=1))[2]


def test_more_micro_batches_than_groups_is_one_clear_error():
    with pytest.raises(ConfigError, match=r"^train.grad_accum: 5 micro-batches of train.groups 4 "
                                          r"groups; expected grad_accum <= groups"):
        from_dict({"train": {"groups": 4, "grad_accum": 5, "invariant": True}})
    from_dict({"train": {"groups": 4, "grad_accum": 5, "invariant": False}})
    with pytest.raises(ConfigError, match=r"^train.groups: 4097, expected at most 4096$"):
        from_dict({"train": {"groups": 4097}})


def test_the_plain_step_syncs_batchnorm_over_global_micro_batches_on_any_world_size():
    """The plain step is not bitwise invariant, but with SyncBatchNorm and grad_accum each
    micro-batch is the same samples on any number of ranks: only float rounding differs."""
    from distnn.train.step import DataParallelStep

    def plain(comm, accum):
        model = Sequential(CONV_BN_DROP, (8, 8, 2), seed=3, extra_grad_slots=EXTRA_SLOTS)
        step = DataParallelStep(model, make_optimizer("momentum", mu=0.9), comm,
                                grad_accum=accum, seed=5)
        sampler = ShardSampler(N_SAMPLES, 20, comm.rank, comm.size, 0, accum=accum)
        for t in range(sampler.steps_per_epoch):
            idx = sampler.local_indices(t)
            step(X[idx], Y[idx], len(sampler.global_indices(t)), 0.05, False, step=t,
                 indices=idx)
        return model.params.copy(), model.state.copy()

    for accum in (1, 3):
        (p1, s1), = run_ranks(1, lambda c, a=accum: plain(c, a))
        for n in (2, 4):
            for p, s in run_ranks(n, lambda c, a=accum: plain(c, a)):
                np.testing.assert_allclose(p, p1, rtol=1e-4, atol=1e-5)
                np.testing.assert_allclose(s, s1, rtol=1e-4, atol=1e-5)
