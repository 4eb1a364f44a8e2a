"""PReLU (He et al. 2015): x if x > 0 else a_c * x, with a learned slope per channel (the last
axis). Values against hand points and a float64 NumPy reference written from the formula,
gradients against finite differences, the slope as a parameter of the flat buffers (trained,
saved, never weight-decayed), the spec checks, and training through Sequential."""

import re

import numpy as np
import pytest

from distnn.nn import PReLU, Sequential, SpecError, build_layers, check_layer
from distnn.nn.lockstep import Group, Lockstep
from distnn.nn.model import offset_in
from distnn.optim.factory import RULES, make_optimizer
from tests.nn.helpers import built

BOUND = 1e-6  # relative error of a gradient check (tests/nn/test_gradcheck.py)
DTYPES = [np.float32, np.float64]


def exactly(message):
    return f"^{re.escape(message)}$"


def reference(x, a, dout):
    """float64 out, dx, da from the formula: out = x if x > 0 else a_c x; dx = dout (x > 0) or
    a_c dout; da_c = sum of dout * x over every position of channel c where x <= 0."""
    x, a, dout = (np.asarray(v, np.float64) for v in (x, a, dout))
    pos = x > 0
    out = np.where(pos, x, a * x)
    dx = np.where(pos, dout, a * dout)
    da = np.where(pos, 0.0, dout * x).reshape(-1, x.shape[-1]).sum(axis=0)
    return out, dx, da


def model_with_slopes(in_shape, slopes, dtype, init=0.25):
    """A dropout(0) + prelu model (so the prelu computes its input gradient) with the given
    slopes."""
    model = Sequential([{"type": "dropout", "rate": 0.0}, {"type": "prelu", "init": init}],
                       in_shape, dtype=dtype)
    layer = model.layers[1]
    layer.p["a"][...] = slopes
    return model, layer


@pytest.mark.parametrize("dtype", DTYPES)
def test_hand_values_per_channel(dtype):
    # Two channels, slopes 0.25 and 3: channel 0 of x = (-2, 0, 5) and channel 1 of (-1, 4, 0).
    model, layer = model_with_slopes((3, 2), [0.25, 3.0], dtype)
    x = np.array([[[-2, -1], [0, 4], [5, 0]]], dtype)
    out = model.forward(x)
    np.testing.assert_array_equal(out, [[[-0.5, -3], [0, 4], [5, 0]]])
    dout = np.array([[[1, 2], [10, 20], [100, 200]]], dtype)
    dx = model.backward(dout)
    # x <= 0 takes the slope (x = 0 included); x > 0 passes dout through.
    np.testing.assert_array_equal(dx, [[[0.25, 6], [2.5, 20], [100, 600]]])
    # da_0 = 1 * (-2) + 10 * 0 = -2; da_1 = 2 * (-1) + 200 * 0 = -2 (x = 4 > 0 does not count)
    np.testing.assert_array_equal(layer.g["a"], [-2, -2])
    np.testing.assert_array_equal(dout, [[[1, 2], [10, 20], [100, 200]]])  # the caller's, kept


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("in_shape", [(3, 4, 5), (7,)])
def test_forward_and_gradients_against_numpy(in_shape, dtype):
    rng = np.random.default_rng(11)
    c = in_shape[-1]
    slopes = rng.uniform(-0.5, 1.5, c)  # a learned slope may leave [0, 1]
    model, layer = model_with_slopes(in_shape, slopes.astype(dtype), dtype)
    x = rng.standard_normal((4, *in_shape)).astype(dtype)
    x.reshape(-1)[::7] = 0  # exact zeros: the negative side
    dout = rng.standard_normal(x.shape).astype(dtype)
    out_ref, dx_ref, da_ref = reference(x, layer.p["a"], dout)
    out = model.forward(x)
    dx = model.backward(dout)
    # Each output is one product (or x itself): exact in either dtype.
    np.testing.assert_array_equal(out, out_ref.astype(dtype))
    np.testing.assert_array_equal(dx, dx_ref.astype(dtype))
    # The slope gradient is summed in float64 and rounded once.
    rtol = 1e-7 if dtype == np.float32 else 1e-13
    np.testing.assert_allclose(layer.g["a"], da_ref, rtol=rtol, atol=0)
    assert out.dtype == dx.dtype == layer.g["a"].dtype == dtype


def test_float32_slope_gradient_adds_exact_products_in_float64():
    # Two positions of one channel, x <= 0 at both: dout * x = (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24
    # (not a float32: 2^-24 is half an ulp of 1) and -(1 + 2^-11). Their float64 sum is 2^-24;
    # products or sums rounded to float32 on the way would lose it (0 or 2^-23).
    u = 1 + 2.0**-12
    _, layer = model_with_slopes((1,), [0.25], np.float32)
    layer.forward(np.array([[-u], [-1.0]], np.float32), True)
    layer.backward(np.array([[-u], [1 + 2.0**-11]], np.float32))
    assert layer.g["a"][0] == np.float32(2.0**-24)


@pytest.mark.parametrize("in_shape", [(3, 4, 5), (7,)])
def test_gradient_check_input_and_slope(in_shape):
    layer = built({"type": "prelu"}, in_shape)
    rng = np.random.default_rng(12)
    layer.p["a"][...] = rng.uniform(-0.5, 1.5, in_shape[-1])
    x = rng.standard_normal((3, *in_shape))
    x = np.where(np.abs(x) < 0.05, np.sign(x + 1e-12) * 0.05, x)  # h = 1e-5 crosses no kink
    errors = check_layer(layer, x, max_checks=1000)
    assert set(errors) == {"x", "a"}
    assert max(errors.values()) < BOUND, errors


def test_work_buffers_are_reused_and_the_gradient_is_written_in_place():
    _, layer = model_with_slopes((2, 3), [0.5, 1.0, 2.0], np.float32)
    x = np.array([[[-1, 2, -3], [4, -5, 6]]], np.float32)
    first = layer.forward(x, True)
    second = layer.forward(-x, True)
    assert second is first  # one output buffer for every step of this shape
    np.testing.assert_array_equal(second, [[[1, -2, 3], [-2, 5, -12]]])  # -x: slopes 1, .5, 2
    dout = np.ones_like(x)
    assert layer.backward(dout) is dout  # in place: the layer after it is done with dout
    np.testing.assert_array_equal(dout, [[[1, 1, 1], [0.5, 1, 2]]])
    # A strided d(out) (not contiguous) gives the same values, in an array of its own.
    wide = np.ones((1, 2, 6), np.float32)
    strided = wide[:, :, ::2]
    np.testing.assert_array_equal(layer.backward(strided), [[[1, 1, 1], [0.5, 1, 2]]])
    np.testing.assert_array_equal(wide, 1)


def test_as_the_first_layer_it_returns_no_input_gradient_but_its_slope_gradient():
    model = Sequential([{"type": "prelu", "init": 0.5}, {"type": "dense", "units": 2}], (3,),
                       dtype=np.float64)
    layer = model.layers[0]
    x = np.array([[-1.0, 2.0, -4.0]])
    model.forward(x)
    assert model.backward(np.array([[1.0, -1.0]])) is None
    # dout at the prelu = dense W @ (1, -1); da_c = that * x_c for the x <= 0 channels.
    back = model.layers[1].p["W"] @ np.array([1.0, -1.0])
    np.testing.assert_allclose(layer.g["a"], [back[0] * -1.0, 0.0, back[2] * -4.0], rtol=1e-15)


def test_the_slope_lives_on_the_flat_buffers_and_is_never_decayed():
    model = Sequential([{"type": "conv", "filters": 3, "kernel": 3, "pad": 1},
                        {"type": "prelu", "init": 0.1}, {"type": "flatten"},
                        {"type": "dense", "units": 4}, {"type": "prelu", "name": "act"}],
                       (4, 5, 2))
    conv, prelu, _, dense, act = model.layers
    for layer, c, init in ((prelu, 3, 0.1), (act, 4, 0.25)):
        a = layer.p["a"]
        assert a.shape == (c,) and np.shares_memory(a, model.params)
        assert np.shares_memory(layer.g["a"], model.grads)
        np.testing.assert_array_equal(a, np.float32(init))
        off = offset_in(model.params, a)
        np.testing.assert_array_equal(model.decay_mask[off:off + c], 0)
        assert layer.decayed() == ()
    for layer in (conv, dense):  # the weights are decayed, their biases not
        off = offset_in(model.params, layer.p["W"])
        np.testing.assert_array_equal(model.decay_mask[off:off + layer.p["W"].size], 1)
    assert int(model.decay_mask.sum()) == conv.p["W"].size + dense.p["W"].size
    assert model.num_params == 3 * 3 * 2 * 3 + 3 + 3 + 60 * 4 + 4 + 4
    # The L2 penalty leaves the slopes out: 0.5 * sum(W^2) of the conv and the dense only.
    prelu.p["a"][...] = 100.0
    expected = 0.5 * sum(float(np.sum(w.astype(np.float64) ** 2))
                         for w in (conv.p["W"], dense.p["W"]))
    assert model.l2_penalty() == pytest.approx(expected, rel=1e-6)
    # AdamW's decoupled decay (with the model's mask) shrinks weights, never a slope.
    rule = make_optimizer("adamw", decay_mask=model.decay_mask, weight_decay=0.5)
    weights = conv.p["W"].copy()
    model.grads[...] = 0.0
    rule.step(model.params, model.grads, 0.1)
    np.testing.assert_array_equal(prelu.p["a"], 100.0)
    np.testing.assert_array_equal(act.p["a"], np.float32(0.25))
    assert np.all(np.abs(conv.p["W"]) < np.abs(weights))
    # Saved and loaded by name, like every other parameter.
    state = model.state_dict()
    assert set(state) == {"conv0.W", "conv0.b", "prelu1.a", "dense3.W", "dense3.b", "act.a"}
    state["act.a"] = np.array([1, 2, 3, 4], np.float32)
    model.load_state_dict(state)
    np.testing.assert_array_equal(act.p["a"], [1, 2, 3, 4])
    assert "prelu init=0.1" in model.summary() and "prelu init=0.25" in model.summary()


@pytest.mark.parametrize("spec,message", [
    ({"type": "prelu", "init": -0.1}, "prelu0: init=-0.1, expected a finite number >= 0"),
    ({"type": "prelu", "init": float("nan")}, "prelu0: init=nan, expected a finite number >= 0"),
    ({"type": "prelu", "init": float("inf")}, "prelu0: init=inf, expected a finite number >= 0"),
    ({"type": "prelu", "init": "0.25"}, "prelu0: init='0.25', expected a finite number >= 0"),
    ({"type": "prelu", "init": True}, "prelu0: init=True, expected a finite number >= 0"),
    ({"type": "prelu", "init": None}, "prelu0: init=None, expected a finite number >= 0"),
    ({"type": "prelu", "init": -1, "name": "act"}, "act: init=-1, expected a finite number >= 0"),
    ({"type": "prelu", "alpha": 0.1},
     "layer 0 (prelu): unknown key(s) ['alpha']; expected some of ['init', 'name']"),
])
def test_spec_errors_are_one_line_naming_layer_value_and_expectation(spec, message):
    with pytest.raises(SpecError, match=exactly(message)):
        build_layers([spec])


def test_spec_defaults_and_bounds():
    layers = build_layers([{"type": "prelu"}, {"type": "prelu", "init": 0},
                           {"type": "prelu", "init": 1.5, "name": "p"}])
    assert [layer.name for layer in layers] == ["prelu0", "prelu1", "p"]
    assert [layer.init for layer in layers] == [0.25, 0.0, 1.5]  # He et al.'s 0.25 by default
    assert isinstance(layers[0], PReLU) and layers[0].kind == "prelu"
    # init 0 starts as a ReLU: the slope still gets its gradient and can grow.
    model, layer = model_with_slopes((2,), [0.0, 0.0], np.float64, init=0)
    np.testing.assert_array_equal(model.forward(np.array([[-3.0, 2.0]])), [[0.0, 2.0]])
    model.backward(np.array([[1.0, 1.0]]))
    np.testing.assert_array_equal(layer.g["a"], [-3.0, 0.0])


TRAINABLE = [name for name in RULES if name != "lbfgs"]  # lbfgs is full-batch only


@pytest.mark.parametrize("name", TRAINABLE)
def test_a_net_with_prelu_trains_and_its_slopes_move(name):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 6, 4, 2)).astype(np.float32)
    y = rng.integers(0, 3, 16)
    model = Sequential([{"type": "conv", "filters": 4, "kernel": 3, "pad": 1},
                        {"type": "prelu"}, {"type": "maxpool", "size": 2}, {"type": "flatten"},
                        {"type": "dense", "units": 8}, {"type": "prelu", "init": 0.1},
                        {"type": "dense", "units": 3}], (6, 4, 2), seed=1)
    rule = make_optimizer(name, decay_mask=model.decay_mask)
    lr = 0.05 if name in ("sgd", "momentum", "nesterov") else 0.01
    losses = []
    for _ in range(8):
        loss, _ = model.forward_backward(x, y, l2=1e-4)
        losses.append(loss)
        rule.step(model.params, model.grads, lr)
    assert losses[-1] < 0.9 * losses[0], losses
    assert not np.any(model.layers[1].p["a"] == np.float32(0.25))
    assert not np.any(model.layers[5].p["a"] == np.float32(0.1))


def test_groups_in_lockstep_add_up_to_the_whole_batch_gradient():
    """The invariant step's replicas (nn/lockstep.py) share the slopes and write their own
    slope gradients."""
    rng = np.random.default_rng(4)
    specs = [{"type": "conv", "filters": 3, "kernel": 3, "pad": 1}, {"type": "prelu"},
             {"type": "flatten"}, {"type": "dense", "units": 3}]
    model = Sequential(specs, (4, 4, 2), seed=2, dtype=np.float64)
    x = rng.standard_normal((6, 4, 4, 2))
    y = np.array([0, 1, 2, 2, 1, 0])
    model.forward_backward(x, y)
    whole = model.grads.copy()
    groups = [Group(x[i:i + 3], y[i:i + 3], np.arange(i, i + 3), np.zeros_like(model.grads))
              for i in (0, 3)]
    Lockstep(model).run(groups, count=6, denom=6, step=0, seed=0,
                        reduce=lambda rows, sync: rows.sum(axis=0), loss="softmax")
    np.testing.assert_allclose(groups[0].grads + groups[1].grads, whole, rtol=1e-12, atol=1e-15)
    off = offset_in(model.params, model.layers[1].p["a"])
    assert np.all(groups[0].grads[off:off + 3] != 0)
