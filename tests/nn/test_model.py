"""The Sequential model: flat buffers, summary arithmetic, determinism, state, precision, sanity."""

import numpy as np
import pytest

from distnn.nn import Sequential, ShapeError, SpecError, StateError, numerical_grad, rel_error

CONV = dict(type="conv", filters=10, kernel=3, pad=1)


def small_cnn(dtype=np.float32, seed=0, init="he"):
    specs = [dict(CONV, init=init), dict(type="relu"), dict(CONV, init=init), dict(type="relu"),
             dict(type="maxpool", size=2), dict(type="flatten"),
             dict(type="dense", units=10, init=init)]
    return Sequential(specs, (8, 8, 3), seed=seed, dtype=dtype)


def test_summary_arithmetic_fc():
    specs = [dict(type="dense", units=4), dict(type="relu"), dict(type="dense", units=4),
             dict(type="relu"), dict(type="dense", units=1)]
    model = Sequential(specs, (3,))
    assert model.num_params == 41
    assert model.summary().splitlines()[-1].split()[-1] == "41"


def test_summary_arithmetic_conv():
    specs = [CONV, dict(type="relu"), CONV, dict(type="relu"), dict(type="maxpool", size=2),
             CONV, dict(type="relu"), CONV, dict(type="relu"), dict(type="maxpool", size=2),
             CONV, dict(type="relu"), CONV, dict(type="relu"), dict(type="maxpool", size=2),
             dict(type="flatten"), dict(type="dense", units=10)]
    model = Sequential(specs, (32, 32, 3))
    counts = [sum(p.size for p in layer.p.values()) for layer in model.layers]
    assert counts[0] == 280 and counts[2] == 910 and counts[-1] == 1610
    assert model.layers[-2].out_shape == (160,)
    text = model.summary()
    assert "280" in text and "910" in text and "1610" in text


def test_params_are_views_into_flat_buffers():
    model = small_cnn()
    model.params[:] = 0.5
    assert all(np.all(p == 0.5) for layer in model.layers for p in layer.p.values())
    x = np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32)
    model.forward_backward(x, np.arange(4))
    views = [g for layer in model.layers for g in layer.g.values()]
    assert all(np.shares_memory(g, model.grads) for g in views)
    layer_grad_sum = sum(float(g.sum(dtype=np.float64)) for g in views)
    assert np.isclose(layer_grad_sum, float(model.grads.sum(dtype=np.float64)), rtol=1e-9)
    assert np.any(model.grads != 0)
    assert model.params.flags.c_contiguous and model.params.dtype == np.float32


def test_same_seed_same_model_bit_for_bit():
    a, b, c = small_cnn(seed=3), small_cnn(seed=3), small_cnn(seed=4)
    assert np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)


def test_init_scales():
    for init, expected in (("small", 0.01), ("he", np.sqrt(2 / 27)),
                           ("xavier", np.sqrt(2 / (27 + 90)))):
        w = small_cnn(init=init).layers[0].p["W"]
        assert abs(w.std() - expected) / expected < 0.15, (init, w.std())


def test_state_dict_round_trip_and_errors():
    a, b = small_cnn(seed=1), small_cnn(seed=2)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.params, b.params)
    state = a.state_dict()
    state["conv0.W"] = state["conv0.W"][:, :, :, :5]
    with pytest.raises(StateError, match=r"conv0\.W.*shape"):
        b.load_state_dict(state)
    state = a.state_dict()
    del state["dense6.b"]
    with pytest.raises(StateError, match=r"dense6\.b"):
        b.load_state_dict(state)


def test_float32_matches_float64():
    m32, m64 = small_cnn(np.float32, seed=5), small_cnn(np.float64, seed=5)
    x = np.random.default_rng(1).standard_normal((6, 8, 8, 3))
    y = np.arange(6) % 10
    l32, _ = m32.forward_backward(x.astype(np.float32), y)
    l64, _ = m64.forward_backward(x, y)
    assert abs(l32 - l64) < 1e-5 * abs(l64)
    np.testing.assert_allclose(m32.grads, m64.grads, rtol=1e-3, atol=1e-6)


def test_whole_model_gradient_with_l2():
    model = small_cnn(np.float64, seed=6)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3, 8, 8, 3))
    y = np.array([1, 4, 7])
    model.forward_backward(x, y, l2=0.1)
    analytic = model.grads.copy()
    idx, num = numerical_grad(lambda: model.forward_backward(x, y, l2=0.1)[0], model.params,
                              max_checks=80, rng=rng)
    assert rel_error(analytic[idx], num) < 1e-5
    biases = model.layers[0].g["b"]  # bias gradient unchanged by L2: mask excludes it
    assert model.decay_mask[: model.layers[0].p["W"].size].all()
    assert biases.size == 10


def test_initial_softmax_loss_is_ln10():
    model = small_cnn(init="small", seed=0)
    x = np.random.default_rng(3).standard_normal((64, 8, 8, 3)).astype(np.float32)
    loss, _ = model.forward_backward(x, np.arange(64) % 10)
    assert abs(loss - np.log(10)) < 0.01


def test_overfits_20_samples():
    model = small_cnn(seed=0)
    rng = np.random.default_rng(4)
    x = rng.standard_normal((20, 8, 8, 3)).astype(np.float32)
    y = np.arange(20) % 10
    v = np.zeros_like(model.params)
    for _ in range(200):
        model.forward_backward(x, y)
        v *= 0.9
        v -= 0.05 * model.grads
        model.params += v
    acc = (model.predict(x).argmax(1) == y).mean()
    assert acc == 1.0


@pytest.mark.parametrize("spec,match", [
    ([{"type": "conv2d", "filters": 3}], "unknown type 'conv2d'"),
    ([{"type": "conv", "filters": 3, "kernal": 3}], "unknown key"),
    ([{"type": "conv"}], "filters"),
    ([{"type": "conv", "filters": 0}], "filters=0"),
    ([{"type": "conv", "filters": 2, "init": "glorot"}], "unknown init 'glorot'"),
    ([{"type": "dropout", "rate": 1.0}], "rate=1.0"),
])
def test_bad_specs(spec, match):
    with pytest.raises(SpecError, match=match):
        Sequential(spec, (7, 7, 3))


def test_dense_on_a_map_asks_for_flatten():
    with pytest.raises(ShapeError, match="dense0: input per-sample shape .*flatten"):
        Sequential([{"type": "dense", "units": 3}], (7, 7, 3))


def test_stride_that_does_not_fit():
    with pytest.raises(ShapeError, match=r"\(7 - 3 \+ 2\*0\) = 4 is not .* stride 3"):
        Sequential([{"type": "conv", "filters": 2, "kernel": 3, "stride": 3}], (7, 7, 3))
    with pytest.raises(ShapeError, match="maxpool"):
        Sequential([{"type": "maxpool", "size": 2}], (7, 7, 3))


def test_wrong_input_shape_or_dtype():
    model = small_cnn()
    with pytest.raises(ShapeError, match=r"conv0: input shape \(2, 8, 8, 1\)"):
        model.forward(np.zeros((2, 8, 8, 1), np.float32))
    with pytest.raises(ShapeError, match="conv0: input dtype float64, expected float32"):
        model.forward(np.zeros((2, 8, 8, 3)))


def test_eval_mode_dropout_and_batchnorm():
    specs = [dict(type="flatten"), dict(type="dense", units=8), dict(type="batchnorm"),
             dict(type="relu"), dict(type="dropout", rate=0.5), dict(type="dense", units=3)]
    model = Sequential(specs, (2, 2, 1), seed=0)
    x = np.random.default_rng(5).standard_normal((16, 2, 2, 1)).astype(np.float32)
    a, b = model.predict(x), model.predict(x)
    assert np.array_equal(a, b)  # eval: no dropout noise, fixed statistics
    t1 = model.forward(x, training=True).copy()
    t2 = model.forward(x, training=True).copy()
    assert not np.array_equal(t1, t2)  # training: fresh dropout masks
    assert not np.allclose(model.state_dict()["batchnorm2.running_mean"], 0)
