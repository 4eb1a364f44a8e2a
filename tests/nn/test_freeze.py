"""Sequential.freeze and lr_scale: a frozen prefix gets no backward pass, a frozen BatchNorm
uses (and keeps) its running statistics, and the trained layers' gradients are those of the
unfrozen model."""

import numpy as np
import pytest

from distnn.nn import Sequential
from distnn.nn.model import offset_in

SPECS = [
    {"type": "conv", "filters": 4, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
    {"type": "relu"}, {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 5, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "flatten"}, {"type": "dense", "units": 7, "name": "hidden"}, {"type": "relu"},
    {"type": "dense", "units": 3, "name": "head"},
]


def model(dtype=np.float64):
    return Sequential(SPECS, (6, 6, 2), seed=3, dtype=dtype)


def data(n=5):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, 6, 6, 2)), rng.integers(0, 3, n)


def count_backward(m):
    calls = []
    for layer in m.layers:
        def wrapped(dout, layer=layer, inner=layer.backward):
            calls.append(layer.name)
            return inner(dout)
        layer.backward = wrapped
    return calls


def test_a_frozen_prefix_gets_no_backward_pass_and_the_rest_the_same_gradients():
    x, y = data()
    full, frozen = model(), model()
    frozen.freeze(["conv0", "batchnorm1"])
    # The frozen BatchNorm normalises with its running statistics: give the full model the
    # same forward by running it in evaluation mode there too.
    full.layers[1].frozen = True
    calls = count_backward(frozen)
    full.forward_backward(x, y)
    frozen.forward_backward(x, y)
    assert calls == ["head", "relu8", "hidden", "flatten6", "relu5", "conv4"]
    assert frozen.backward_stop == 4 and not frozen.layers[4].input_grad
    off = frozen.train_offset
    assert off == offset_in(frozen.params, frozen.layers[4].p["W"])
    np.testing.assert_array_equal(frozen.grads[off:], full.grads[off:])
    assert not frozen.grads[:off].any()  # never written


def test_a_frozen_batchnorm_keeps_its_running_statistics():
    m = model()
    m.layers[1].s["running_mean"][...] = 0.5
    m.freeze(["batchnorm1"])
    before = m.state.copy()
    x, y = data()
    m.forward_backward(x, y)
    np.testing.assert_array_equal(m.state, before)
    free = model()
    free.forward_backward(x, y)
    assert not np.array_equal(free.state, before)  # unfrozen: the statistics move


def test_lr_scale_takes_the_first_matching_glob_and_zero_for_frozen_layers():
    m = model(np.float32)
    m.freeze(["conv0", "hidden"])
    scale = m.lr_scale({"h*": 0.5, "head": 2.0, "*": 0.1})
    assert scale is not None and scale.size == m.params.size - m.train_offset
    off = m.train_offset

    def values(name):
        layer = next(lay for lay in m.layers if lay.name == name)
        return {float(v) for arr in layer.p.values()
                for v in scale[offset_in(m.params, arr) - off:][:arr.size]}

    assert values("conv4") == {0.1}
    assert values("hidden") == {0.0}  # frozen, though "h*" matches it
    assert values("head") == {0.5}  # "h*" comes first
    assert model(np.float32).lr_scale({"x*": 3.0}) is None  # no layer matched: nothing to scale


def test_freeze_refuses_an_unknown_layer_and_freezing_everything():
    with pytest.raises(KeyError, match="'conv9' is not a layer"):
        model().freeze(["conv9"])
    with pytest.raises(ValueError, match="every layer with parameters is frozen"):
        model().freeze(["conv0", "batchnorm1", "conv4", "hidden", "head"])
