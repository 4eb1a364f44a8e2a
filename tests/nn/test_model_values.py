"""Values of Dropout, BatchNorm, the losses, L2 weight decay and initialisation at hand-computed
points (the layers' forward values are in test_forward_values.py).

Every expectation is written by hand (the arithmetic in a comment) or computed by a small
float64 NumPy reference written from the math, never by calling the code under test.
"""

import math

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.nn import Sequential, softmax_cross_entropy, svm_hinge
from distnn.nn.init import init_std
from distnn.optim import make_optimizer
from distnn.train.step import EXTRA_SLOTS, DataParallelStep

DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-6}


def close(got, want, dtype=np.float64):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got - want).max(initial=0.0))
    assert err <= TOL[np.dtype(dtype).type] * scale, (err, got, want)


def layer_of(spec, in_shape, dtype=np.float64, seed=0):
    """The layer of a one-layer model (parameters bound and initialised)."""
    return Sequential([spec], in_shape, seed=seed, dtype=dtype).layers[0]


# -- Dropout -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("rate,scale", [(0.2, 1.25), (0.5, 2.0), (0.75, 4.0), (0.3, 1 / 0.7)])
def test_dropout_training_is_inverted_dropout(rate, scale, dtype):
    """`rate` is the drop probability; survivors are scaled by 1 / (1 - rate)."""
    layer = layer_of({"type": "dropout", "rate": rate}, (1000,), dtype, seed=7)
    x = (np.arange(20_000).reshape(20, 1000) % 7 + 1).astype(dtype)  # 1..7, never 0
    out = layer.forward(x, training=True).copy()
    kept = out != 0
    close(out[kept], x[kept] * scale, dtype)
    # Kept count ~ Binomial(n, 1 - rate): within 6 standard deviations (fixed seed: the count
    # is deterministic; the bound says what any correct mask satisfies).
    n = x.size
    sd = math.sqrt(n * rate * (1 - rate))
    assert abs(kept.sum() - n * (1 - rate)) <= 6 * sd
    # The backward pass applies the same mask and scale.
    dx = layer.backward(np.full_like(x, 3))
    close(dx, np.where(kept, 3 * scale, 0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_eval_and_rate_zero_are_identity(dtype):
    x = np.arange(1, 13, dtype=dtype).reshape(3, 4)
    layer = layer_of({"type": "dropout"}, (4,), dtype)
    assert layer.rate == 0.5  # the default drop probability
    close(layer.forward(x, training=False), x, dtype)
    close(layer.backward(np.ones_like(x)), np.ones_like(x), dtype)
    layer = layer_of({"type": "dropout", "rate": 0.0}, (4,), dtype)
    close(layer.forward(x, training=True), x, dtype)


def test_dropout_default_rate_keeps_half():
    layer = layer_of({"type": "dropout"}, (1000,), seed=3)
    out = layer.forward(np.ones((10, 1000)), training=True)
    assert set(np.unique(out)) <= {0.0, 2.0}
    assert abs((out != 0).sum() - 5000) <= 6 * math.sqrt(10_000 * 0.25)


def test_dropout_masks_follow_reseed():
    model = Sequential([{"type": "dense", "units": 50}, {"type": "dropout"}], (4,), seed=1)
    x = np.ones((8, 4), np.float32)
    model.reseed(1, 2, 0)
    a = model.forward(x, training=True).copy()
    b = model.forward(x, training=True).copy()
    model.reseed(1, 2, 0)
    assert np.array_equal(model.forward(x, training=True), a)
    assert not np.array_equal(a, b)


# -- BatchNorm -----------------------------------------------------------------------------------
# Channel 0: [1, 2, 3, 4], mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25,
# unbiased 5 / 3. Channel 1: [10, 10, 14, 6], mean 10, deviations [0, 0, 4, -4], biased
# variance 32 / 4 = 8, unbiased 32 / 3.
X_BN = [[1, 10], [2, 10], [3, 14], [4, 6]]
MEAN, VAR, UNBIASED = np.array([2.5, 10]), np.array([1.25, 8]), np.array([5 / 3, 32 / 3])
GAMMA, BETA = np.array([2.0, 0.5]), np.array([1.0, -1.0])


def bn_layer(in_shape, dtype, **kw):
    layer = layer_of({"type": "batchnorm", **kw}, in_shape, dtype)
    layer.p["gamma"][...] = GAMMA
    layer.p["beta"][...] = BETA
    return layer


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 2), (2, 1, 2, 2), (1, 2, 2, 2)], ids=["dense", "map", "1x"])
def test_batchnorm_training_uses_batch_mean_and_biased_variance(shape, dtype):
    layer = bn_layer(shape[1:], dtype)
    x = np.array(X_BN, dtype).reshape(shape)  # maps: the same 4 values per channel
    out = layer.forward(x, training=True)
    eps = 1e-5  # the default
    want = GAMMA * (np.array(X_BN) - MEAN) / np.sqrt(VAR + eps) + BETA
    assert out.shape == shape
    close(out.reshape(4, 2), want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_custom_eps(dtype):
    layer = bn_layer((2,), dtype, eps=0.25)
    out = layer.forward(np.array(X_BN, dtype), training=True)
    # channel 0: (x - 2.5) / sqrt(1.25 + 0.25) * 2 + 1; channel 1: (x - 10) / sqrt(8.25) / 2 - 1
    want = GAMMA * (np.array(X_BN) - MEAN) / np.sqrt(VAR + 0.25) + BETA
    close(out, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_batchnorm_initial_state_and_parameters(dtype):
    layer = layer_of({"type": "batchnorm"}, (3,), dtype)
    close(layer.p["gamma"], [1, 1, 1])
    close(layer.p["beta"], [0, 0, 0])
    close(layer.s["running_mean"], [0, 0, 0])
    close(layer.s["running_var"], [1, 1, 1])
    assert (layer.momentum, layer.eps) == (0.9, 1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(4, 2), (2, 2, 1, 2)], ids=["dense", "map"])
def test_batchnorm_running_statistics_after_one_and_two_updates(shape, dtype):
    layer = bn_layer(shape[1:], dtype)
    x = np.array(X_BN, dtype).reshape(shape)
    layer.forward(x, training=True)
    # running = 0.9 * running + 0.1 * batch, from (0, 1), with the UNBIASED batch variance:
    # mean 0.1 * [2.5, 10] = [0.25, 1]; var 0.9 + 0.1 * [5/3, 32/3] = [1.0666.., 1.9666..]
    rm1, rv1 = np.array([0.25, 1.0]), np.array([0.9 + 1 / 6, 0.9 + 16 / 15])
    close(layer.s["running_mean"], rm1, dtype)
    close(layer.s["running_var"], rv1, dtype)
    layer.forward(x, training=True)
    # mean 0.9 * [0.25, 1] + [0.25, 1] = [0.475, 1.9]; var 0.9 * rv1 + [1/6, 16/15]
    rm2, rv2 = np.array([0.475, 1.9]), 0.9 * rv1 + np.array([1 / 6, 16 / 15])
    close(layer.s["running_mean"], rm2, dtype)
    close(layer.s["running_var"], rv2, dtype)
    # Evaluation normalises with the running statistics and leaves them alone.
    out = layer.forward(x, training=False)
    want = GAMMA * (np.array(X_BN) - rm2) / np.sqrt(rv2 + 1e-5) + BETA
    close(out.reshape(4, 2), want, dtype)
    close(layer.s["running_mean"], rm2, dtype)
    # d(out)/dx in evaluation is the constant gamma / sqrt(running_var + eps)
    dx = layer.backward(np.ones(shape, dtype))
    close(dx.reshape(4, 2), np.tile(GAMMA / np.sqrt(rv2 + 1e-5), (4, 1)), dtype)


def test_batchnorm_custom_momentum():
    layer = bn_layer((2,), np.float64, momentum=0.25)
    layer.forward(np.array(X_BN, np.float64), training=True)
    # 0.25 * 0 + 0.75 * [2.5, 10]; 0.25 * 1 + 0.75 * [5/3, 32/3] = [1.5, 8.25]
    close(layer.s["running_mean"], [1.875, 7.5])
    close(layer.s["running_var"], [1.5, 8.25])


def test_batchnorm_batch_of_one_sample():
    """One value per channel: batch variance 0 (the unbiased correction divides by max(m-1, 1))."""
    layer = bn_layer((2,), np.float64)
    out = layer.forward(np.array([[3.0, -1.0]]), training=True)
    close(out, [BETA])  # x - mean = 0
    close(layer.s["running_mean"], [0.3, -0.1])
    close(layer.s["running_var"], [0.9, 0.9])


# -- Losses --------------------------------------------------------------------------------------
# exp of [0, ln 2, ln 3] is [1, 2, 3]: softmax [1/6, 1/3, 1/2]
LN2, LN3 = math.log(2), math.log(3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_cross_entropy_by_hand(dtype):
    # row 1 is row 0 shifted by 100 and rotated: [ln 3, 0, ln 2] + 100, softmax [1/2, 1/6, 1/3]
    scores = np.array([[0, LN2, LN3], [100 + LN3, 100, 100 + LN2]], dtype)
    y = np.array([0, 2])
    loss, d = softmax_cross_entropy(scores, y)
    # mean of -ln(1/6) and -ln(1/3)
    assert loss == pytest.approx((math.log(6) + LN3) / 2, rel=TOL[dtype])
    close(d, [[1 / 6 - 1, 1 / 3, 1 / 2], [1 / 2, 1 / 6, 1 / 3 - 1]] / np.float64(2), dtype)
    assert d.dtype == dtype
    loss, d = softmax_cross_entropy(scores, y, denom=8)  # a global batch of 8 over the workers
    assert loss == pytest.approx((math.log(6) + LN3) / 8, rel=TOL[dtype])
    close(d, [[1 / 6 - 1, 1 / 3, 1 / 2], [1 / 2, 1 / 6, 1 / 3 - 1]] / np.float64(8), dtype)
    loss, d = softmax_cross_entropy(scores[:1], np.array([2]))
    assert loss == pytest.approx(LN2, rel=TOL[dtype])  # -ln(1/2)
    close(d, [[1 / 6, 1 / 3, -1 / 2]], dtype)


def test_softmax_uniform_and_empty():
    loss, d = softmax_cross_entropy(np.zeros((3, 4)), np.array([0, 1, 3]))
    assert loss == pytest.approx(math.log(4), rel=1e-15)
    close(d, np.array([[-3, 1, 1, 1], [1, -3, 1, 1], [1, 1, 1, -3]]) / 12)
    loss, d = softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64))
    assert loss == 0 and d.shape == (0, 4)
    loss, d = softmax_cross_entropy(np.zeros((0, 4)), np.zeros(0, np.int64), denom=0)
    assert loss == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_svm_hinge_by_hand(dtype):
    scores = np.array([[1, 3, 2.5], [2, 1, 0.5]], dtype)
    y = np.array([0, 0])
    loss, d = svm_hinge(scores, y)  # delta defaults to 1
    # row 0 margins: 3 - 1 + 1 = 3, 2.5 - 1 + 1 = 2.5 -> 5.5, d = [-2, 1, 1]
    # row 1 margins: 1 - 2 + 1 = 0 (not > 0: no loss, no gradient), 0.5 - 2 + 1 = -0.5
    assert loss == pytest.approx(5.5 / 2, rel=TOL[dtype])
    close(d, [[-1, 0.5, 0.5], [0, 0, 0]], dtype)
    assert d.dtype == dtype
    loss, d = svm_hinge(scores, y, delta=2.0)
    # row 0: 4 + 3.5 = 7.5; row 1: 1 + 0.5 = 1.5, both margins count: d = [-2, 1, 1]
    assert loss == pytest.approx(9 / 2, rel=TOL[dtype])
    close(d, [[-1, 0.5, 0.5], [-1, 0.5, 0.5]], dtype)
    loss, d = svm_hinge(scores, y, delta=0.5, denom=4)
    # row 0: 2.5 + 2 = 4.5, d [-2, 1, 1]; row 1: -0.5 and -1: nothing
    assert loss == pytest.approx(4.5 / 4, rel=TOL[dtype])
    close(d, [[-0.5, 0.25, 0.25], [0, 0, 0]], dtype)


def test_svm_true_class_in_the_middle():
    loss, d = svm_hinge(np.array([[0.0, 1.0, 1.5, -3.0]]), np.array([1]))
    # margins j=0: 0 - 1 + 1 = 0 (no), j=2: 1.5, j=3: -3 -> loss 1.5
    assert loss == pytest.approx(1.5, rel=1e-15)
    close(d, [[0, -1, 1, 0]])


# -- Numerical guards of the losses --------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
def test_softmax_extreme_logits_are_finite(dtype):
    scores = np.array([[1e4, -1e4, 0], [1e4, -1e4, 0]], dtype)
    loss, d = softmax_cross_entropy(scores, np.array([1, 0]))
    # row 0: -log softmax = 1e4 - (-1e4) = 2e4 (exp(-1e4) underflows to 0); row 1: 0
    assert loss == pytest.approx(1e4, rel=1e-12)
    close(d, [[0.5, -0.5, 0], [0, 0, 0]], dtype)
    same = np.array([[3e38, 3e38, 0]], np.float32)  # one sign: the max shift cannot overflow
    loss, d = softmax_cross_entropy(same, np.array([1]))
    assert loss == pytest.approx(LN2, rel=1e-6)
    close(d, [[0.5, -0.5, 0]], np.float32)


def test_softmax_float32_logits_of_both_signs_near_max():
    # The shift is done in float64: 3e38 - (-3e38) overflows float32.
    scores = np.array([[3e38, -3e38, 0]], np.float32)
    loss, d = softmax_cross_entropy(scores, np.array([0]))
    assert loss == 0.0 and d.dtype == np.float32
    np.testing.assert_array_equal(d, [[0.0, 0.0, 0.0]])
    loss, d = softmax_cross_entropy(scores, np.array([1]))
    assert loss == pytest.approx(6e38, rel=1e-6)  # -log p_1 = 3e38 - (-3e38)
    np.testing.assert_array_equal(d, [[1.0, -1.0, 0.0]])
    loss, _ = svm_hinge(scores, np.array([1]))
    assert loss == pytest.approx(6e38 + 1 + 3e38 + 1, rel=1e-6)  # margins 6e38+1 and 3e38+1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("loss_fn", [softmax_cross_entropy, svm_hinge])
def test_non_finite_logit_gives_nan_loss_and_zero_gradient_without_warning(bad, loss_fn):
    """The documented promise: a NaN loss (the step's divergence check sees it and skips the
    update) and a zero gradient, with no RuntimeWarning (pytest turns those into errors)."""
    for dtype in (np.float32, np.float64):
        scores = np.array([[bad, 0.0], [1.0, 0.0]], dtype)
        loss, d = loss_fn(scores, np.array([1, 0]))
        assert math.isnan(loss)
        assert d.dtype == dtype and d.shape == (2, 2) and not d.any()


# -- L2 weight decay -----------------------------------------------------------------------------
SPEC_L2 = [{"type": "conv", "filters": 2, "pad": 1}, {"type": "batchnorm"}, {"type": "relu"},
           {"type": "flatten"}, {"type": "dense", "units": 3}]


@pytest.mark.parametrize("denom", [None, 8])
def test_l2_adds_half_l2_norm_squared_of_weights_only(denom):
    """loss += l2 * share * 0.5 * (sum of squared conv and dense weights), share = N / denom;
    grad(W) += l2 * share * W; biases, gamma and beta are not decayed."""
    model = Sequential(SPEC_L2, (3, 3, 1), seed=2, dtype=np.float64)
    conv, bn, _, _, dense = model.layers
    for arr in (conv.p["b"], bn.p["gamma"], bn.p["beta"], dense.p["b"]):
        arr[...] = np.linspace(0.5, 1.5, arr.size)  # non-zero: a decayed bias would show
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 3, 3, 1)), np.array([0, 1, 2, 1])
    state = model.state.copy()
    plain, _ = model.forward_backward(x, y, denom=denom)
    named = [(conv, "W"), (dense, "W"), (conv, "b"), (bn, "gamma"), (bn, "beta"), (dense, "b")]
    g0 = [layer.g[name].copy() for layer, name in named]
    model.state[...] = state  # BatchNorm updated its running statistics: undo
    l2 = 0.3
    value, _ = model.forward_backward(x, y, l2=l2, denom=denom)
    share = 4 / (denom or 4)
    wc, wd = conv.p["W"], dense.p["W"]
    penalty = 0.5 * (np.sum(wc**2) + np.sum(wd**2))
    assert value - plain == pytest.approx(l2 * share * penalty, rel=1e-10)
    diffs = [layer.g[name] - g for (layer, name), g in zip(named, g0, strict=True)]
    close(diffs[0], l2 * share * wc)
    close(diffs[1], l2 * share * wd)
    for diff in diffs[2:]:
        close(diff, np.zeros(diff.shape))


def test_step_loss_and_correct_count_by_hand():
    """DataParallelStep reports (data loss + L2) and argmax hits of the batch."""
    model = Sequential([{"type": "dense", "units": 3}], (2,), dtype=np.float64,
                       extra_grad_slots=EXTRA_SLOTS)
    dense = model.layers[0]
    dense.p["W"][...] = [[1, 0, 0], [0, 1, 0]]  # scores = [x0, x1, 0]
    dense.p["b"][...] = 0
    step = DataParallelStep(model, make_optimizer("sgd"), create_communicator("local"), l2=0.5)
    x = np.array([[LN2, 0], [0, 0], [0, LN3]])
    y = np.array([0, 2, 2])
    res = step(x, y, 3, 0.0, False)
    # rows: [ln 2, 0, 0] -> p = [1/2, 1/4, 1/4], y=0 hit; [0, 0, 0] -> argmax 0 (first), y=2
    # miss; [0, ln 3, 0] -> p = [1/5, 3/5, 1/5], y=2 miss. Loss (ln 2 + ln 3 + ln 5) / 3 plus
    # 0.5 * 0.5 * ||W||^2 = 0.25 * 2.
    assert (res.correct, res.count, res.stop) == (1, 3, False)
    assert res.loss == pytest.approx((LN2 + LN3 + math.log(5)) / 3 + 0.5, rel=1e-12)


# -- Initialisation ------------------------------------------------------------------------------
def test_init_std_formulas():
    assert init_std("small", 3, 5, "x") == 0.01
    assert init_std("xavier", 3, 5, "x") == pytest.approx(0.5, rel=1e-15)  # sqrt(2 / 8)
    assert init_std("xavier", 10, 40, "x") == pytest.approx(0.2, rel=1e-15)  # sqrt(2 / 50)
    assert init_std("he", 8, 1000, "x") == pytest.approx(0.5, rel=1e-15)  # sqrt(2 / 8)
    assert init_std("he", 50, 1, "x") == pytest.approx(0.2, rel=1e-15)  # sqrt(2 / 50)


@pytest.mark.parametrize("init,std", [
    (None, 1 / 3),  # default He: sqrt(2 / fan_in), fan_in = 3 * 3 * 2 = 18
    ("he", 1 / 3),
    ("xavier", math.sqrt(1 / 27)),  # sqrt(2 / (18 + fan_out 3 * 3 * 4 = 36))
    ("small", 0.01),
])
def test_conv_init_draws_with_fan_in_and_fan_out(init, std):
    spec = {"type": "conv", "filters": 4, "pad": 1}
    if init:
        spec["init"] = init
    conv = layer_of(spec, (5, 5, 2), seed=11)
    draws = np.random.default_rng(11).standard_normal((3, 3, 2, 4))
    close(conv.p["W"], draws * std)
    close(conv.p["b"], np.zeros(4))


@pytest.mark.parametrize("init,std", [
    (None, 0.5),  # default He: sqrt(2 / 8)
    ("xavier", math.sqrt(2 / 12)),  # fan_in 8, fan_out 4
    ("small", 0.01),
])
def test_dense_init_draws(init, std):
    spec = {"type": "dense", "units": 4}
    if init:
        spec["init"] = init
    dense = layer_of(spec, (8,), dtype=np.float32, seed=4)
    draws = np.random.default_rng(4).standard_normal((8, 4))
    close(dense.p["W"], draws * std, np.float32)
    close(dense.p["b"], np.zeros(4))
