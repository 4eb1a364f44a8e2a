"""What layers and losses promise at their edges: one clear error line naming the layer, the bad
value and what was expected; the boundary values that are allowed; names; dtypes and shapes of
what they return.

Expected messages and values are written out by hand.
"""

import re

import numpy as np
import pytest

from distnn.nn import (
    Conv2D,
    MaxPool2D,
    Sequential,
    ShapeError,
    SpecError,
    build_layers,
    svm_hinge,
)


def exactly(message):
    return f"^{re.escape(message)}$"


# -- activations -------------------------------------------------------------------------------
@pytest.mark.parametrize("spec,message", [
    ({"type": "leaky_relu", "alpha": -0.5},
     "leaky_relu0: alpha=-0.5, expected a finite number >= 0"),
    ({"type": "elu", "alpha": -1}, "elu0: alpha=-1, expected a finite number >= 0"),
    ({"type": "elu", "alpha": "1"}, "elu0: alpha='1', expected a finite number >= 0"),
    ({"type": "leaky_relu", "alpha": -0.5, "name": "act"},
     "act: alpha=-0.5, expected a finite number >= 0"),
    ({"type": "elu", "alpha": -2.0, "name": "e"}, "e: alpha=-2.0, expected a finite number >= 0"),
    ({"type": "maxout", "k": 1}, "maxout0: k=1, expected an integer >= 2"),
    ({"type": "maxout", "k": 0}, "maxout0: k=0, expected an integer >= 2"),
    ({"type": "maxout", "k": 2.5}, "maxout0: k=2.5, expected an integer >= 2"),
    ({"type": "maxout", "k": 3.0}, "maxout0: k=3.0, expected an integer >= 2"),
    ({"type": "maxout", "k": "2"}, "maxout0: k='2', expected an integer >= 2"),
    ({"type": "maxout", "k": True}, "maxout0: k=True, expected an integer >= 2"),
    ({"type": "maxout", "k": 1, "name": "mx"}, "mx: k=1, expected an integer >= 2"),
])
def test_activation_spec_errors(spec, message):
    with pytest.raises(SpecError, match=exactly(message)):
        build_layers([spec])


def test_alpha_zero_is_allowed():
    """alpha >= 0: zero makes leaky ReLU a ReLU and ELU zero on the negative side."""
    x = np.array([[-2.0, 0.0, 3.0]])
    leaky = Sequential([{"type": "leaky_relu", "alpha": 0}], (3,), dtype=np.float64)
    elu = Sequential([{"type": "elu", "alpha": 0.0}], (3,), dtype=np.float64)
    assert leaky.layers[0].alpha == 0.0 and elu.layers[0].alpha == 0.0
    np.testing.assert_array_equal(leaky.predict(x), [[0.0, 0.0, 3.0]])
    np.testing.assert_array_equal(elu.predict(x), [[0.0, 0.0, 3.0]])


def test_activation_layers_keep_their_names():
    layers = build_layers([{"type": "leaky_relu"}, {"type": "elu"}, {"type": "maxout"},
                           {"type": "leaky_relu", "name": "a"}, {"type": "elu", "name": "b"},
                           {"type": "maxout", "k": np.int64(3), "name": "c"}])
    assert [layer.name for layer in layers] == ["leaky_relu0", "elu1", "maxout2", "a", "b", "c"]
    assert layers[5].k == 3 and type(layers[5].k) is int


def test_maxout_needs_a_last_axis_divisible_by_k():
    message = ("maxout0: last axis 7 is not divisible by k=2; expected the previous layer to "
               "output U*k features")
    with pytest.raises(ShapeError, match=exactly(message)):
        Sequential([{"type": "maxout"}], (3, 5, 7))
    message = ("m: last axis 8 is not divisible by k=3; expected the previous layer to output "
               "U*k features")
    with pytest.raises(ShapeError, match=exactly(message)):
        Sequential([{"type": "dense", "units": 8}, {"type": "maxout", "k": 3, "name": "m"}], (4,))


def test_maxout_output_size_is_exact_integer_division():
    """2**54 + 2 features in pairs: 2**53 + 1 = 9007199254740993 outputs (a float division would
    round to ...992); the size check then refuses the layer and names that number."""
    message = ("maxout0: output shape (9007199254740993,) holds 9007199254740993 values per "
               "sample, expected at most 268435456")
    with pytest.raises(SpecError, match=exactly(message)):
        Sequential([{"type": "maxout"}], (2**54 + 2,))


def test_maxout_output_shape_is_integers():
    layer = Sequential([{"type": "maxout", "k": 3}], (2, 2, 12)).layers[0]
    assert layer.out_shape == (2, 2, 4)
    assert all(type(d) is int for d in layer.out_shape)


def test_float32_activations_stay_float32():
    x = np.array([[-2.0, 0.5, 3.0, 1.0]], np.float32)
    sigmoid = Sequential([{"type": "sigmoid"}], (4,), dtype=np.float32).layers[0]
    out = sigmoid.forward(x, True)
    assert out.dtype == np.float32
    assert sigmoid.backward(np.ones_like(x)).dtype == np.float32
    maxout = Sequential([{"type": "dropout", "rate": 0.0}, {"type": "maxout"}], (4,),
                        dtype=np.float32).layers[1]
    out = maxout.forward(x, True)  # pairs (-2, 0.5), (3, 1)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[0.5, 3.0]])
    dx = maxout.backward(np.array([[5.0, 7.0]], np.float32))
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, [[0.0, 5.0, 7.0, 0.0]])


# -- pooling -------------------------------------------------------------------------------------
def test_global_avg_pool_needs_a_map():
    with pytest.raises(ShapeError, match=exactly(
            "globalavgpool0: input per-sample shape (4,), expected (H, W, C)")):
        Sequential([{"type": "globalavgpool"}], (4,))
    with pytest.raises(ShapeError, match=exactly(
            "gap: input per-sample shape (2, 3, 4, 5), expected (H, W, C)")):
        Sequential([{"type": "globalavgpool", "name": "gap"}], (2, 3, 4, 5))


# -- BatchNorm -----------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"momentum": 1}, "batchnorm0: momentum=1, expected a number in [0, 1)"),
    ({"momentum": 1.0}, "batchnorm0: momentum=1.0, expected a number in [0, 1)"),
    ({"momentum": 1.5}, "batchnorm0: momentum=1.5, expected a number in [0, 1)"),
    ({"momentum": -0.1}, "batchnorm0: momentum=-0.1, expected a number in [0, 1)"),
    ({"momentum": "0.9"}, "batchnorm0: momentum='0.9', expected a number in [0, 1)"),
    ({"momentum": True}, "batchnorm0: momentum=True, expected a number in [0, 1)"),
    ({"eps": 0}, "batchnorm0: eps=0, expected a finite number > 0"),
    ({"eps": 0.0}, "batchnorm0: eps=0.0, expected a finite number > 0"),
    ({"eps": -1e-5}, "batchnorm0: eps=-1e-05, expected a finite number > 0"),
    ({"momentum": 2, "name": "bn"}, "bn: momentum=2, expected a number in [0, 1)"),
])
def test_batchnorm_spec_errors(kwargs, message):
    with pytest.raises(SpecError, match=exactly(message)):
        build_layers([{"type": "batchnorm", **kwargs}])


def bn(in_shape, **kw):
    return Sequential([{"type": "dropout", "rate": 0.0}, {"type": "batchnorm", **kw}], in_shape,
                      dtype=np.float64).layers[1]


def test_batchnorm_momentum_zero_keeps_the_last_batch_statistics():
    layer = bn((1,), momentum=0)
    assert layer.momentum == 0.0
    layer.forward(np.array([[1.0], [3.0]]), training=True)
    # mean 2; biased variance ((1-2)^2 + (3-2)^2) / 2 = 1, unbiased 2 / (2 - 1) = 2
    np.testing.assert_array_equal(layer.s["running_mean"], [2.0])
    np.testing.assert_array_equal(layer.s["running_var"], [2.0])


def test_batchnorm_running_variance_of_a_batch_of_two_is_unbiased():
    layer = bn((2,))
    layer.forward(np.array([[1.0, 0.0], [3.0, 4.0]]), training=True)
    # channel 0: mean 2, unbiased variance 2; channel 1: mean 2, deviations -2, 2: unbiased 8.
    # running = 0.9 * (0, 1) + 0.1 * batch: mean [0.2, 0.2], variance [1.1, 1.7]
    np.testing.assert_allclose(layer.s["running_mean"], [0.2, 0.2], rtol=1e-15)
    np.testing.assert_allclose(layer.s["running_var"], [1.1, 1.7], rtol=1e-15)


@pytest.mark.parametrize("training", [False, True])
def test_batchnorm_backward_keeps_the_map_shape(training):
    layer = bn((2, 1, 3))
    layer.s["running_var"][...] = [3.0, 0.0, 8.0]
    x = np.arange(12, dtype=np.float64).reshape(2, 2, 1, 3)
    out = layer.forward(x, training=training)
    assert out.shape == (2, 2, 1, 3)
    dout = np.ones((2, 2, 1, 3))
    dx = layer.backward(dout)
    assert dx.shape == (2, 2, 1, 3)
    if not training:
        # evaluation: d(out)/dx = gamma / sqrt(running_var + eps), gamma = 1
        want = 1 / np.sqrt(np.array([3.0, 0.0, 8.0]) + 1e-5)
        np.testing.assert_allclose(dx, np.broadcast_to(want, (2, 2, 1, 3)), rtol=1e-14)
    else:
        # training: a constant d(out) changes nothing after normalisation: dx = 0
        np.testing.assert_allclose(dx, 0, atol=1e-12)


# -- losses --------------------------------------------------------------------------------------
@pytest.mark.parametrize("scores,y,message", [
    (np.zeros(3), np.zeros(3, np.int64), "svm_hinge: scores shape (3,), expected (N, classes)"),
    (np.zeros((2, 3)), np.zeros(3, np.int64), "svm_hinge: labels shape (3,), expected (2,)"),
    (np.zeros((2, 3)), np.array([0, 5]), "svm_hinge: labels in [0, 5], expected in [0, 2]"),
    (np.zeros((2, 3)), np.array([-1, 1]), "svm_hinge: labels in [-1, 1], expected in [0, 2]"),
])
def test_svm_hinge_input_errors(scores, y, message):
    with pytest.raises(ShapeError, match=exactly(message)):
        svm_hinge(scores, y)


# -- integer spec values of pooling and conv layers ----------------------------------------------
@pytest.mark.parametrize("kwargs,message", [
    ({"size": 2.0}, "maxpool: size=2.0, expected an integer >= 1"),
    ({"size": True}, "maxpool: size=True, expected an integer >= 1"),
    ({"size": "2"}, "maxpool: size='2', expected an integer >= 1"),
    ({"size": 0}, "maxpool: size=0, expected an integer >= 1"),
    ({"size": 2, "stride": 1.5}, "maxpool: stride=1.5, expected an integer >= 1"),
    ({"size": 2, "stride": False}, "maxpool: stride=False, expected an integer >= 1"),
])
def test_pool_size_and_stride_must_be_integers(kwargs, message):
    with pytest.raises(SpecError, match=exactly(message)):
        MaxPool2D(**kwargs)


def test_pool_accepts_numpy_integers():
    pool = MaxPool2D(np.int64(3), stride=np.int32(2))
    assert (pool.size, pool.stride) == (3, 2)
    assert type(pool.size) is int and type(pool.stride) is int


@pytest.mark.parametrize("kwargs,message", [
    ({"filters": 4.0}, "conv: filters=4.0, expected an integer >= 1"),
    ({"filters": True}, "conv: filters=True, expected an integer >= 1"),
    ({"filters": 4, "kernel": "3"}, "conv: kernel='3', expected an integer >= 1"),
    ({"filters": 4, "stride": 1.0}, "conv: stride=1.0, expected an integer >= 1"),
    ({"filters": 4, "pad": True}, "conv: pad=True, expected an integer >= 0"),
    ({"filters": 4, "pad": -1}, "conv: pad=-1, expected an integer >= 0"),
])
def test_conv_spec_values_must_be_integers(kwargs, message):
    with pytest.raises(SpecError, match=exactly(message)):
        Conv2D(**kwargs)


def test_conv_fuse_relu_is_false_until_a_model_fuses_it():
    assert Conv2D(4).fuse_relu is False
    model = Sequential([{"type": "conv", "filters": 2, "pad": 1}, {"type": "relu"},
                        {"type": "conv", "filters": 2, "pad": 1}], (4, 4, 1))
    assert model.layers[0].fuse_relu is True
    assert model.layers[2].fuse_relu is False


def test_unknown_layer_and_bad_units_are_one_line_each():
    from distnn.nn.dense import Dense
    from distnn.nn.registry import build_layers
    with pytest.raises(SpecError) as err:
        build_layers([{"type": "nope"}])
    assert str(err.value) == (
        "layer 0: unknown type 'nope'; expected one of avgpool, batchnorm, conv, dense, dropout, "
        "elu, flatten, globalavgpool, leaky_relu, maxout, maxpool, prelu, relu, sigmoid, tanh")
    with pytest.raises(SpecError) as err:
        Dense(0)
    assert str(err.value) == "dense: units=0, expected an integer >= 1"
