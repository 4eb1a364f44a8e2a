"""Every layer and loss against centred finite differences in float64.

Bound: relative error < 1e-6 for smooth layers. Piecewise-linear layers (ReLU family, max pool,
maxout) are checked on inputs kept away from their kinks, with the same bound.
"""

import numpy as np
import pytest

from distnn.nn import (
    Sequential,
    check_layer,
    conv,
    numerical_grad,
    rel_error,
    softmax_cross_entropy,
    svm_hinge,
)
from tests.nn.helpers import built

BOUND = 1e-6


def away_from_zero(shape, rng, gap=0.05):
    """Random inputs with |x| >= gap so that h = 1e-5 never crosses a ReLU kink."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < gap, np.sign(x + 1e-12) * gap, x)


CONV_CASES = [
    # (per-sample input shape, spec)
    ((5, 5, 3), dict(filters=4, kernel=3, stride=1, pad=1)),
    ((7, 7, 2), dict(filters=3, kernel=3, stride=2, pad=0)),
    ((7, 7, 2), dict(filters=3, kernel=3, stride=2, pad=1)),
    ((6, 6, 1), dict(filters=2, kernel=5, stride=1, pad=2)),
    ((5, 7, 3), dict(filters=2, kernel=1, stride=1, pad=0)),
    ((9, 9, 2), dict(filters=2, kernel=3, stride=3, pad=0)),
    # 3x3 stride 1 with an even output: the Winograd path (the cases above take im2col)
    ((6, 6, 3), dict(filters=4, kernel=3, stride=1, pad=1)),
    ((6, 8, 2), dict(filters=3, kernel=3, stride=1, pad=0)),
    ((4, 4, 2), dict(filters=2, kernel=3, stride=1, pad=2)),
    # 3x3 stride 1 with an odd output: the direct path but not Winograd
    ((5, 6, 3), dict(filters=5, kernel=3, stride=1, pad=0)),
]


@pytest.mark.parametrize("in_shape,spec", CONV_CASES)
def test_conv(in_shape, spec):
    layer = built(dict(type="conv", **spec), in_shape)
    # Check every algorithm that applies (the default for a shape depends on its channel
    # counts, so force each).
    three = spec["kernel"] == 3 and spec["stride"] == 1
    winograd = conv.Winograd.fits(layer)
    assert winograd == (three and layer.out_shape[0] % 2 == 0)
    assert conv.Direct.fits(layer) == three
    algorithms = ["im2col"] + ["winograd"] * winograd + ["direct"] * three
    x = np.random.default_rng(1).standard_normal((2,) + in_shape)
    for algorithm in algorithms:
        layer.algorithm = algorithm
        errs = check_layer(layer, x)
        assert max(errs.values()) < BOUND, (algorithm, errs)


def test_fused_conv_relu_equals_separate_layers():
    """conv→relu is fused into one pass; a no-op layer in between prevents the fusion."""
    conv = dict(type="conv", filters=3, kernel=3, pad=1)
    tail = [dict(type="flatten"), dict(type="dense", units=4)]
    fused = Sequential([conv, dict(type="relu")] + tail, (5, 5, 2), seed=1, dtype=np.float64)
    plain = Sequential([conv, dict(type="dropout", rate=0.0), dict(type="relu")] + tail,
                       (5, 5, 2), seed=1, dtype=np.float64)
    assert fused.layers[0].fuse_relu and not plain.layers[0].fuse_relu
    plain.params[:] = fused.params  # same layout: the no-op layer has no parameters
    x = np.random.default_rng(2).standard_normal((3, 5, 5, 2))
    y = np.array([0, 1, 3])
    lf, _ = fused.forward_backward(x, y)
    lp, _ = plain.forward_backward(x, y)
    assert lf == lp
    np.testing.assert_array_equal(fused.grads, plain.grads)


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("in_shape,size,stride",
                         [((4, 4, 3), 2, 2), ((5, 5, 2), 3, 2), ((6, 6, 1), 3, 3)])
def test_pool(kind, in_shape, size, stride):
    layer = built(dict(type=kind, size=size, stride=stride), in_shape)
    values = np.random.default_rng(3).permutation(np.arange(2 * np.prod(in_shape)))
    x = values.reshape((2,) + in_shape) / 7.0
    errs = check_layer(layer, x.astype(np.float64))
    assert errs["x"] < BOUND, errs


def test_global_avg_pool():
    layer = built(dict(type="globalavgpool"), (3, 4, 5))
    errs = check_layer(layer, np.random.default_rng(4).standard_normal((2, 3, 4, 5)))
    assert errs["x"] < BOUND


@pytest.mark.parametrize("in_shape", [(7,), (3, 3, 4)])
def test_dense_and_flatten(in_shape):
    if len(in_shape) == 1:
        layer = built(dict(type="dense", units=5), in_shape)
    else:
        layer = built(dict(type="flatten"), in_shape)
    errs = check_layer(layer, np.random.default_rng(5).standard_normal((3,) + in_shape))
    assert max(errs.values()) < BOUND, errs


@pytest.mark.parametrize("spec", [
    dict(type="relu"), dict(type="leaky_relu", alpha=0.1), dict(type="elu", alpha=1.3),
    dict(type="tanh"), dict(type="sigmoid"), dict(type="maxout", k=3),
])
@pytest.mark.parametrize("in_shape", [(12,), (2, 3, 6)])
def test_activations(spec, in_shape):
    layer = built(spec, in_shape)
    x = away_from_zero((3,) + in_shape, np.random.default_rng(6))
    errs = check_layer(layer, x)
    assert errs["x"] < BOUND, errs


@pytest.mark.parametrize("training", [True, False])
def test_dropout(training):
    layer = built(dict(type="dropout", rate=0.4), (4, 4, 3))
    x = np.random.default_rng(7).standard_normal((3, 4, 4, 3))
    errs = check_layer(layer, x, training=training)
    assert errs["x"] < BOUND


@pytest.mark.parametrize("in_shape", [(6,), (3, 3, 4)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm(in_shape, training):
    layer = built(dict(type="batchnorm"), in_shape)
    rng = np.random.default_rng(8)
    layer.p["gamma"][...] = 1 + 0.3 * rng.standard_normal(layer.p["gamma"].shape)
    layer.s["running_mean"][...] = rng.standard_normal(in_shape[-1])
    layer.s["running_var"][...] = 1 + rng.random(in_shape[-1])
    # Checking calls forward many times; with fixed statistics in eval mode that is harmless, and
    # in training mode the gradient does not depend on the running averages.
    errs = check_layer(layer, rng.standard_normal((5,) + in_shape) * 2 + 1, training=training)
    assert max(errs.values()) < BOUND, errs


@pytest.mark.parametrize("loss", [softmax_cross_entropy, svm_hinge])
def test_losses(loss):
    rng = np.random.default_rng(9)
    scores = rng.standard_normal((6, 5)) * 3
    y = rng.integers(0, 5, 6)
    _, analytic = loss(scores, y)
    idx, num = numerical_grad(lambda: loss(scores, y)[0], scores)
    # 1e-5: softmax probabilities of ~1e-7 carry ~2e-11 of finite-difference round-off.
    assert rel_error(analytic.reshape(-1)[idx], num) < 1e-5


def test_first_layer_computes_no_input_gradient():
    layer = built(dict(type="conv", filters=2, kernel=3, pad=1), (4, 4, 1), first=True)
    layer.forward(np.ones((1, 4, 4, 1)), True)
    assert layer.backward(np.ones((1, 4, 4, 2))) is None
    assert np.any(layer.g["W"] != 0)
