"""The invariant step's numbers against a float64 reference of the whole batch (dropout masks,
seed, loss kinds, L2, correct count, micro-batches), its stop flag and apply switch, and the
exact sum at the bottom of the float32 range. (Bit identity across world sizes:
tests/train/test_invariant_step.py.)"""

import numpy as np
import pytest

from distnn.comm import LocalCommunicator
from distnn.data import ShardSampler
from distnn.nn import Sequential
from distnn.nn.regularize import Dropout, sample_keys
from distnn.optim import make_optimizer
from distnn.train.exact import ExactSum
from distnn.train.invariant import InvariantStep
from distnn.train.step import EXTRA_SLOTS, DataParallelStep
from tests.train.threadcomm import run_ranks

DROP_NET = [{"type": "conv", "filters": 3, "kernel": 3, "pad": 1}, {"type": "relu"},
            {"type": "flatten"}, {"type": "dense", "units": 12}, {"type": "relu"},
            {"type": "dropout", "rate": 0.4}, {"type": "dense", "units": 5}]
RNG = np.random.default_rng(4)
X = RNG.standard_normal((40, 6, 6, 2))
Y = RNG.integers(0, 5, 40)
BATCH, STEP, SEED, L2 = 21, 7, 5, 0.01


def invariant(comm, loss="softmax", accum=1, groups=7, seed=SEED, dtype=np.float64, **kw):
    model = Sequential(DROP_NET, (6, 6, 2), seed=2, dtype=dtype, extra_grad_slots=EXTRA_SLOTS)
    step = InvariantStep(model, make_optimizer("sgd"), comm, loss=loss, l2=L2, grad_accum=accum,
                         groups=groups, seed=seed)
    sampler = ShardSampler(40, BATCH, comm.rank, comm.size, 0, shuffle=False, groups=groups,
                           accum=accum)
    idx = sampler.local_indices(0)
    res = step(X[idx].astype(dtype), Y[idx], BATCH, 0.0, False, apply=False, step=STEP,
               indices=idx, **kw)
    return res, model.grads.copy()


def reference(loss="softmax", seed=SEED):
    """float64, the whole batch in one pass, each dropout layer given the keyed masks."""
    model = Sequential(DROP_NET, (6, 6, 2), seed=2, dtype=np.float64)
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dropout):
            layer.keys = sample_keys(seed, i, STEP, np.arange(BATCH))
    value, scores = model.forward_backward(X[:BATCH], Y[:BATCH], loss, L2, BATCH)
    return value, model.grads.copy(), int((scores.argmax(axis=1) == Y[:BATCH]).sum())


@pytest.mark.parametrize("loss", ["softmax", "svm"])
@pytest.mark.parametrize("accum", [1, 2, 3])
def test_loss_gradient_and_correct_count_are_the_whole_batch_reference(loss, accum):
    value, grads, correct = reference(loss)
    for n in (1, 3):
        for res, got in run_ranks(n, lambda c: invariant(c, loss, accum)):
            assert res.loss == pytest.approx(value, rel=1e-12)  # data loss + 0.5 l2 |W|^2
            assert (res.correct, res.count, res.stop) == (correct, BATCH, False)
            np.testing.assert_allclose(got, grads, rtol=1e-10, atol=1e-13)


def test_the_seed_keys_the_dropout_masks_and_dropout_is_on():
    (_, grads), = run_ranks(1, lambda c: invariant(c, seed=6))
    np.testing.assert_allclose(grads, reference(seed=6)[1], rtol=1e-10, atol=1e-13)
    assert np.abs(grads - reference(seed=5)[1]).max() > 1e-3
    # The plain step keys its masks the same way: one rank, the same gradient.
    model = Sequential(DROP_NET, (6, 6, 2), seed=2, dtype=np.float64,
                       extra_grad_slots=EXTRA_SLOTS)
    plain = DataParallelStep(model, make_optimizer("sgd"), LocalCommunicator(), l2=L2, seed=6)
    plain(X[:BATCH], Y[:BATCH], BATCH, 0.0, False, apply=False, step=STEP,
          indices=np.arange(BATCH))
    np.testing.assert_allclose(model.grads, grads, rtol=1e-10, atol=1e-13)


def test_float32_and_float64_models_give_the_same_bits_on_1_to_3_ranks():
    for dtype in (np.float32, np.float64):
        runs = [run_ranks(n, lambda c, d=dtype: invariant(c, accum=2, dtype=d))
                for n in (1, 2, 3)]
        want = runs[0][0][1]
        assert all(np.array_equal(got, want) for per_rank in runs for _, got in per_rank)


def test_a_stop_request_on_one_rank_reaches_every_rank():
    def job(comm, who):
        model = Sequential(DROP_NET, (6, 6, 2), seed=2, extra_grad_slots=EXTRA_SLOTS)
        step = InvariantStep(model, make_optimizer("sgd"), comm, groups=4)
        idx = ShardSampler(40, 8, comm.rank, comm.size, 0, groups=4).local_indices(0)
        return step(X[idx].astype(np.float32), Y[idx], 8, 0.1, comm.rank == who,
                    apply=False, indices=idx).stop
    assert run_ranks(3, lambda c: job(c, who=-1)) == [False] * 3
    assert run_ranks(3, lambda c: job(c, who=2)) == [True] * 3


def test_apply_false_leaves_the_parameters_and_apply_true_takes_one_sgd_step():
    model = Sequential(DROP_NET, (6, 6, 2), seed=2, extra_grad_slots=EXTRA_SLOTS)
    step = InvariantStep(model, make_optimizer("sgd"), LocalCommunicator())  # the defaults
    x, y = X[:BATCH].astype(np.float32), Y[:BATCH]
    before = model.params.copy()
    res = step(x, y, BATCH, 0.5, False, apply=False)
    assert np.array_equal(model.params, before) and res.count == BATCH
    keyed = model.grads.copy()
    step(x, y, BATCH, 0.5, False, apply=True, indices=np.arange(BATCH))  # = the default keys
    np.testing.assert_array_equal(model.grads, keyed)
    np.testing.assert_allclose(model.params, before - np.float32(0.5) * keyed, rtol=1e-6,
                               atol=1e-7)


def test_a_batch_of_one_sample_is_one_counted_update():
    model = Sequential(DROP_NET, (6, 6, 2), seed=2, extra_grad_slots=EXTRA_SLOTS)
    step = InvariantStep(model, make_optimizer("sgd"), LocalCommunicator(), groups=16,
                         grad_accum=4)
    before = model.params.copy()
    res = step(X[:1].astype(np.float32), Y[:1], 1, 0.5, False)
    assert res.count == 1 and not np.array_equal(model.params, before)


def test_the_smallest_subnormals_sum_exactly():
    tiny = np.array([[1, 2, 0], [3, 0, 1]], np.int32).view(np.float32)  # 1.4e-45 steps
    out = np.empty(3, np.float32)
    ExactSum(3, 2, LocalCommunicator())(tiny, out)
    np.testing.assert_array_equal(out.view(np.int32), [4, 2, 1])


def test_a_bucket_whose_largest_value_is_the_smallest_subnormal():
    tiny = np.array([[1, 0], [1, 1]], np.int32).view(np.float32)
    out = np.empty(2, np.float32)
    ExactSum(2, 2, LocalCommunicator())(tiny, out)
    np.testing.assert_array_equal(out.view(np.int32), [2, 1])


def test_the_defaults_are_16_groups_seed_0_step_0_and_softmax():
    def grads(**kw):
        model = Sequential(DROP_NET, (6, 6, 2), seed=2, extra_grad_slots=EXTRA_SLOTS)
        InvariantStep(model, make_optimizer("sgd"), LocalCommunicator(), **kw)(
            X[:BATCH].astype(np.float32), Y[:BATCH], BATCH, 0.0, False, apply=False,
            **({"step": 0} if kw else {}))
        return model.grads.copy()

    np.testing.assert_array_equal(grads(), grads(groups=16, seed=0, loss="softmax"))
    assert not np.array_equal(grads(), grads(groups=16, seed=1))
