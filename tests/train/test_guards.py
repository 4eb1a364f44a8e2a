"""The numerical guards of one training step and of the guard objects, each driven by the input
that trips it (issue 20, part 1; the guards at work in whole runs: test_divergence_runs.py).

- the stable softmax: logits far past exp()'s float32 range give the exact loss, no warning;
- a non-finite step loss (NaN in one sample, an overflowing forward pass) is not applied: the
  parameters and the optimizer state stay bit-identical, and the next step is a clean first one;
- DivergenceGuard: NaN/inf always diverge; a finite loss diverges iff it is *above*
  divergence_factor x the initial loss; exactly max_rollbacks rollbacks are allowed;
- clip_grad_norm: the clipped global gradient has exactly the clip norm and the same direction;
  with the clip above the norm nothing changes; float32 gradients whose squares overflow get
  the right norm;
- early stopping never counts a NaN (or an infinity) as an improvement.

Expected values are written out here or come from the float64 reference in tests/train/tiny.py.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.config import from_dict
from distnn.nn import Sequential
from distnn.nn.losses import softmax_cross_entropy
from distnn.optim import make_optimizer
from distnn.train.divergence import DivergenceGuard
from distnn.train.errors import TrainingDiverged
from distnn.train.state import EarlyStopping, RunState
from distnn.train.step import EXTRA_SLOTS, DataParallelStep, clip_grad_norm_
from tests.train import tiny


# -- the stable softmax --------------------------------------------------------------------------
def test_softmax_loss_is_exact_for_logits_far_beyond_exp_range():
    scores = np.array([[1e4, 0.0, -1e4], [100.0, 100.5, -3e4]], np.float32)
    y = np.array([1, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, dscores = softmax_cross_entropy(scores, y)
    # Row 0: log(e^1e4 + e^0 + e^-1e4) - 0 = 1e4 (the rest is below float64's resolution).
    # Row 1: log(e^100 + e^100.5) - 100 = log(1 + e^0.5).
    expected = (1e4 + math.log1p(math.exp(0.5))) / 2
    assert loss == pytest.approx(expected, rel=1e-6)
    p1 = math.exp(-math.log1p(math.exp(-0.5)))  # softmax of 100.5 against 100
    want = np.array([[1.0, -1.0, 0.0], [(1 - p1) - 1.0, p1, 0.0]]) / 2
    np.testing.assert_allclose(dscores, want, atol=1e-6)


def dense_step(rule="sgd", clip=0.0, accum=1, seed=5):
    model = Sequential(tiny.DENSE, tiny.SHAPE, seed=seed, extra_grad_slots=EXTRA_SLOTS)
    opt = make_optimizer(rule, **({"mu": 0.9} if rule == "momentum" else {}))
    return model, opt, DataParallelStep(model, opt, create_communicator("local"),
                                        grad_accum=accum, clip_grad_norm=clip)


def wb(model) -> tuple[np.ndarray, np.ndarray]:
    state = model.state_dict()
    return (next(v for k, v in state.items() if k.endswith(".W")).astype(np.float64),
            next(v for k, v in state.items() if k.endswith(".b")).astype(np.float64))


def batch(n=6, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    x = (rng.random((n,) + tiny.SHAPE) * scale).astype(np.float32)
    return x, rng.integers(0, tiny.CLASSES, n)


def test_a_step_on_huge_logits_is_finite_and_applied():
    model, _, step = dense_step()
    x, y = batch(scale=3e3)  # scores of order 1e3: exp() would overflow without the shift
    w, b = wb(model)
    x64 = x.reshape(len(x), -1).astype(np.float64)
    scores = x64 @ w + b
    want = float(np.mean(np.logaddexp.reduce(scores, axis=1) - scores[np.arange(len(y)), y]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shift must keep every exp() finite: no warning
        res = step(x, y, len(y), 1e-4, False)
    assert res.loss == pytest.approx(want, rel=1e-5)
    gw, gb = tiny.gradient(w, b, x64, y)
    w1, b1 = wb(model)
    np.testing.assert_allclose(w1, w - 1e-4 * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1, b - 1e-4 * gb, rtol=1e-5, atol=1e-7)


# -- a non-finite step loss is not applied ---------------------------------------------------------
@pytest.mark.parametrize("accum", [1, 2])
@pytest.mark.parametrize("where", [0, 5])
def test_nan_in_one_sample_skips_the_update_and_leaves_no_trace(accum, where):
    model, opt, step = dense_step("momentum", accum=accum)
    x, y = batch()
    start = model.params.copy()
    bad = x.copy()
    bad[where, 1, 0, 0] = np.nan
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a NaN propagates quietly: no warning may escape
        res = step(bad, y, len(y), 0.5, False)
    assert math.isnan(res.loss) and res.count == 6
    assert np.array_equal(model.params, start)  # bit-identical
    assert opt.state_dict() == {"t": 0}  # the momentum never saw the step
    # The next clean step is the first real one: momentum's first step is -lr * g.
    w, b = wb(model)
    x64 = x.reshape(len(x), -1).astype(np.float64)
    res = step(x, y, len(y), 0.5, False)
    assert res.loss == pytest.approx(float(tiny.losses(w, b, x64, y).mean()), rel=1e-6)
    gw, gb = tiny.gradient(w, b, x64, y)
    w1, b1 = wb(model)
    np.testing.assert_allclose(w1, w - 0.5 * gw, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b1, b - 0.5 * gb, rtol=1e-5, atol=1e-6)


def test_an_overflowing_forward_pass_is_not_applied():
    # Finite input and weights, float32 overflow in the forward pass: sample 2's scores are all
    # +inf, so the loss is NaN (losses.py: a non-finite score gives NaN and a zero gradient).
    model, opt, step = dense_step("momentum")
    w = np.zeros((4, tiny.CLASSES), np.float32)
    x, y = batch()
    x[2] = 0.0
    w[0] = w[1] = 1.0
    x[2, 0, :, 0] = 3e38  # pixels 0 and 1: 3e38 + 3e38 overflows
    names = sorted(model.state_dict())  # [dense1.W, dense1.b]
    model.load_state_dict({names[0]: w, names[1]: np.zeros(tiny.CLASSES, np.float32)})
    start = model.params.copy()
    # Deliberate: NumPy flags the overflow in the dense layer's product; that is this test's
    # input; the guard under test is what the step does with the result.
    with np.errstate(over="ignore"):
        res = step(x, y, len(y), 0.5, False)
    assert not math.isfinite(res.loss)
    assert np.array_equal(model.params, start) and opt.state_dict() == {"t": 0}


def test_scores_further_apart_than_float32_max_give_the_exact_loss():
    # Sample 2's scores are 3e38, -3e38, 0 with label 1: its loss is 6e38 (beyond float32, exact
    # in the float64 softmax); the batch loss is a finite 6e38 / 6 = 1e38 plus the others' share,
    # which a run's divergence check then stops.
    model, opt, step = dense_step("sgd")
    w = np.zeros((4, tiny.CLASSES), np.float32)
    x, y = batch()
    x[2] = 0.0
    w[0] = [1.0, -1.0, 0.0]
    x[2, 0, 0, 0], y[2] = 3e38, 1
    names = sorted(model.state_dict())
    model.load_state_dict({names[0]: w, names[1]: np.zeros(tiny.CLASSES, np.float32)})
    others = [i for i in range(len(y)) if i != 2]
    rest = float(tiny.losses(w.astype(np.float64), np.zeros(tiny.CLASSES),
                             x[others].reshape(len(others), -1).astype(np.float64),
                             y[others]).sum())
    res = step(x, y, len(y), 0.0, False)
    assert res.loss == pytest.approx((6e38 + rest) / len(y), rel=1e-6)


# -- DivergenceGuard.diverged: the comparison itself -----------------------------------------------
def guard(factor=3.0, **train):
    cfg = from_dict({"train": {"divergence_factor": factor, **train}}).train
    return DivergenceGuard(cfg, keeper=None, metrics=None, is_root=True)


def test_divergence_limit_is_exclusive():
    g, state = guard(3.0), RunState(initial_loss=2.0)
    assert not g.diverged(state, 6.0)  # exactly 3 x 2.0: passes
    assert g.diverged(state, math.nextafter(6.0, math.inf))  # one ulp above: diverged
    assert not g.diverged(state, 0.0) and not g.diverged(state, 5.999)


@pytest.mark.parametrize("initial", [None, 2.0])
def test_non_finite_always_diverges_and_no_initial_means_no_limit(initial):
    g, state = guard(3.0), RunState(initial_loss=initial)
    for value in (math.nan, math.inf, -math.inf):
        assert g.diverged(state, value)
    assert g.diverged(state, 1e300) == (initial is not None)


def test_rollbacks_left_is_exactly_max_rollbacks():
    g = guard(on_divergence="rollback", max_rollbacks=2)
    g.keeper = type("K", (), {"describe_last": lambda self: None})()
    g.stop_unless_rolling_back(RunState(rollbacks=1), "step 5: loss 9", 0.1)  # one left
    with pytest.raises(TrainingDiverged, match=r"\(2 rollback\(s\) did not help\)"):
        g.stop_unless_rolling_back(RunState(rollbacks=2, initial_loss=1.0), "step 5", 0.1)


# -- clip_grad_norm ------------------------------------------------------------------------------
def test_clip_gives_exactly_the_clip_norm_in_the_same_direction():
    model, _, step = dense_step(clip=0.05)
    x, y = batch(seed=1)
    w, b = wb(model)
    gw, gb = tiny.gradient(w, b, x.reshape(len(x), -1).astype(np.float64), y)
    g = np.concatenate([gw.ravel(), gb])
    norm = float(np.linalg.norm(g))
    assert norm > 0.05  # the premise: it needs clipping
    step(x, y, len(y), 0.7, False)
    dense = model.layers[1]
    got = np.concatenate([dense.g["W"].ravel(), dense.g["b"]]).astype(np.float64)
    assert float(np.linalg.norm(got)) == pytest.approx(0.05, rel=2e-7)
    np.testing.assert_allclose(got, g * (0.05 / norm), rtol=1e-5, atol=1e-9)
    w1, b1 = wb(model)
    np.testing.assert_allclose(w1, w - 0.7 * gw * (0.05 / norm), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b1, b - 0.7 * gb * (0.05 / norm), rtol=1e-5, atol=1e-7)


def test_clip_above_the_norm_changes_nothing():
    free_model, _, free = dense_step(clip=0.0)
    model, _, step = dense_step(clip=1e3)
    x, y = batch(seed=1)
    free(x, y, len(y), 0.7, False)
    step(x, y, len(y), 0.7, False)
    assert np.array_equal(model.grads, free_model.grads)
    assert np.array_equal(model.params, free_model.params)


def test_clip_norm_of_float32_gradients_whose_squares_overflow():
    g = np.full(16, 1e20, np.float32)  # each square (1e40) overflows float32, the norm does not
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        norm = clip_grad_norm_(g, 2.0)
    assert norm == pytest.approx(4e20, rel=1e-7)
    assert np.all(np.isfinite(g))
    np.testing.assert_allclose(g, np.full(16, 0.5), rtol=1e-6)


@pytest.mark.parametrize("clip", [0.02, 50.0])
def test_clip_in_a_run_bounds_the_applied_gradient(tmp_path, clip):
    # Full batch, one SGD step: the weights move by lr x the clipped gradient of the float64
    # reference, and the train line's grad_norm is the norm after clipping.
    data = tiny.make_data(tmp_path, 8, 4)
    cfg = tiny.config(data, train={"global_batch": 8, "clip_grad_norm": clip},
                      schedule={"base_lr": 0.5})
    tiny.run(cfg, tmp_path / "run")
    w0, b0 = tiny.initial_weights(cfg)
    gw, gb = tiny.gradient(w0, b0, data.x_train, data.y_train)
    norm = math.sqrt(float((gw ** 2).sum() + (gb ** 2).sum()))
    assert 0.02 < norm < 50.0  # the premise: one clip is below the norm, one above
    scale = min(1.0, clip / norm)
    w1, b1 = tiny.weights(tmp_path / "run" / "checkpoints" / "last.h5")
    np.testing.assert_allclose(w1, w0 - 0.5 * scale * gw, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b1, b0 - 0.5 * scale * gb, rtol=1e-5, atol=1e-7)
    (line,) = tiny.lines(tmp_path / "run", "train")
    assert line["grad_norm"] == pytest.approx(min(clip, norm), rel=1e-5)


# -- early stopping and a NaN ----------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["min", "max"])
def test_a_nan_validation_never_counts_as_an_improvement(mode):
    es = EarlyStopping(mode=mode, patience=1)
    assert not es.update(math.nan, 0) and es.best is None and es.bad_epochs == 1
    assert es.update(1.0, 1) and es.best == 1.0 and es.bad_epochs == 0
    assert not es.update(math.nan, 2) and es.best == 1.0 and es.best_epoch == 1
    assert not es.update(math.inf if mode == "max" else -math.inf, 3) and es.best == 1.0
    assert es.exhausted  # two bad epochs > patience 1


def test_the_step_takes_one_micro_batch_by_default():
    model = Sequential([{"type": "flatten"}, {"type": "dense", "units": 3}], (1, 2, 1), seed=0)
    step = DataParallelStep(model, make_optimizer("sgd"), create_communicator("local"))
    assert step.grad_accum == 1
