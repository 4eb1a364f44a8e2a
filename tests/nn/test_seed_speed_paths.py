"""The seed net's fast paths (issue 17): direct convs that hand planar data to each other, a
2x2 max pool whose d(out) the direct conv before it routes itself, the pools on the thread
pool, and the branch-free kernels. Each must give the bits of the plain NHWC path, for any
thread count, and leave layers called on their own unchanged."""

import numpy as np
import pytest

from distnn.nn import MaxPool2D, Sequential, direct, kernels, softmax_cross_entropy, threads
from distnn.nn.gradcheck import numerical_grad, rel_error


def conv(filters, pad=1):
    return {"type": "conv", "filters": filters, "kernel": 3, "pad": pad}


RELU, POOL = {"type": "relu"}, {"type": "maxpool", "size": 2}
FLAT, DENSE = {"type": "flatten"}, {"type": "dense", "units": 3}
# conv -> relu -> conv (pad 0 before pad 1, and pad 2 before pad 1: the handed-back gradient's
# offset depends on the first conv's padding), conv -> conv without a ReLU, conv -> relu ->
# pool, odd filter counts (the weight gradient's 4 + 2 + 1 blocks), 3 input channels.
SPECS = [conv(5, pad=0), RELU, conv(7), RELU, POOL, conv(4, pad=2), RELU, conv(3), conv(6),
         RELU, POOL, FLAT, DENSE]
SHAPE = (10, 10, 3)  # 8x8 after the first conv, 4x4 after the pool, 6x6 after pad 2


def unwired(model):
    """The same model with every link Sequential made removed: the plain NHWC path."""
    for layer in model.layers:
        if hasattr(layer, "handoff"):
            layer.handoff.after = layer.handoff.before = layer.handoff.pool_after = None
        if isinstance(layer, MaxPool2D):
            layer.producer = None
    model._wired, model._handing_on = [], []
    return model


def step(model, x, y):
    loss, scores = model.forward_backward(x, y)
    return loss, scores.copy(), model.grads.copy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wired_paths_give_the_bits_of_the_nhwc_path_on_any_thread_count(dtype):
    y = np.array([0, 1, 2, 0, 1])
    results = []
    for count, wire in ((1, False), (1, True), (2, True), (3, True)):
        with threads.limit(count):
            model = Sequential(SPECS, SHAPE, seed=1, dtype=dtype)
            if not wire:
                unwired(model)
            for layer in model.layers:  # non-zero biases: their handling is checked too
                if "b" in layer.p:
                    layer.p["b"][...] = np.linspace(-0.2, 0.2, layer.p["b"].size)
            got = []
            for seed in (0, 1):  # twice: reused buffers and stamps
                x = np.random.default_rng(seed).standard_normal((5,) + SHAPE).astype(dtype)
                got.append(step(model, x, y))
            results.append(got)
    for other in results[1:]:
        for (la, sa, ga), (lb, sb, gb) in zip(results[0], other, strict=True):
            assert la == lb
            np.testing.assert_array_equal(sa, sb)
            np.testing.assert_array_equal(ga, gb)


def test_the_fast_paths_are_taken(monkeypatch):
    seen = []
    fwd, bwd = direct.forward, direct.backward

    def spy_forward(*a):
        # fills its planar input, hands on to the next conv, computes the pool after it
        seen.append(("forward", bool(a[9]), a[10].shape[0] > 0, a[14].shape[0] > 0))
        return fwd(*a)

    def spy_backward(*a):
        seen.append(("backward", a[1], a[20].shape[0] > 0))  # source, hands back
        return bwd(*a)

    monkeypatch.setattr(direct, "forward", spy_forward)
    monkeypatch.setattr(direct, "backward", spy_backward)
    model = Sequential(SPECS, SHAPE, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).standard_normal((1,) + SHAPE)  # one image: one call a layer
    model.forward_backward(x, np.array([1]))
    assert seen == [
        ("forward", True, True, False), ("forward", False, False, True),  # conv0 -> conv2 -> pool
        ("forward", True, True, False), ("forward", False, True, False),  # conv5 -> conv7 ->
        ("forward", False, False, True),  # conv8 -> pool
        ("backward", 1, True),  # conv8: the pool's d(out), its dx handed back to conv7
        ("backward", 2, True),  # conv7: d(out) from conv8, its dx handed back to conv5
        ("backward", 2, False),  # conv5: after a pool, so NHWC dx
        ("backward", 1, True),  # conv2: the pool's d(out), dx handed back to conv0
        ("backward", 2, False),  # conv0: the first layer, no dx
    ]


def test_a_wired_model_passes_a_gradient_check():
    specs = [conv(3), RELU, conv(2), RELU, POOL, FLAT, DENSE]
    model = Sequential(specs, (4, 4, 2), seed=3, dtype=np.float64, input_grad=True)
    for layer in model.layers:
        if "b" in layer.p:
            layer.p["b"][...] = 0.05
    x = np.random.default_rng(2).standard_normal((2, 4, 4, 2))
    y = np.array([0, 2])
    dx = model.backward(softmax_cross_entropy(model.forward(x), y)[1])  # wired
    grads = model.grads.copy()

    def f():
        return softmax_cross_entropy(model.forward(x), y)[0]

    for arr, analytic in ((model.params, grads), (x, dx)):
        idx, num = numerical_grad(f, arr, h=1e-6)
        assert rel_error(num, analytic.reshape(-1)[idx]) < 1e-6


def test_layers_driven_one_by_one_after_a_wired_forward_give_the_plain_gradients():
    # As `distnn sanity`'s gradient check does: the model's forward, then each layer's
    # backward called by hand (not wired), then each layer's forward on its own.
    model = Sequential(SPECS, SHAPE, seed=2, dtype=np.float64)
    plain = unwired(Sequential(SPECS, SHAPE, seed=2, dtype=np.float64))
    x = np.random.default_rng(5).standard_normal((3,) + SHAPE)
    y = np.array([0, 1, 2])
    want = step(plain, x, y)[2]
    _, d = softmax_cross_entropy(model.forward(x), y)
    for layer in reversed(model.layers):
        d = layer.backward(d)
    np.testing.assert_array_equal(model.grads, want)
    h = x.copy()
    outs = []
    for layer in model.layers:
        h = layer.forward(h, True)
        outs.append(np.array(h))
    h = x.copy()
    for layer, out in zip(plain.layers, outs, strict=True):
        h = layer.forward(h, True)
        np.testing.assert_array_equal(h, out)


def test_an_output_handed_on_is_written_when_asked_for_and_refused_once_overwritten():
    specs = [conv(3), RELU, conv(2), FLAT, DENSE]
    model = Sequential(specs, (5, 5, 2), seed=0, dtype=np.float64, input_grad=True)
    plain = unwired(Sequential(specs, (5, 5, 2), seed=0, dtype=np.float64, input_grad=True))
    x = np.random.default_rng(0).standard_normal((2, 5, 5, 2))
    first, second = model.layers[0], model.layers[2]
    model.forward(x)  # first's output goes to second's planar input only
    want = plain.layers[0].forward(x, True)
    d = np.ones_like(want)
    first.backward(d.copy())  # outside Sequential.backward: needs the output, writes it
    np.testing.assert_array_equal(first._scratch["out"], want)
    plain.layers[0].backward(d.copy())
    np.testing.assert_array_equal(first.g["W"], plain.layers[0].g["W"])
    model.forward(x)
    second.forward(np.zeros_like(want), True)  # second's planar input is someone else's now
    with pytest.raises(RuntimeError, match="handed on"):
        first.backward(d.copy())


def test_steady_state_steps_allocate_no_new_work_buffers():
    model = Sequential(SPECS, SHAPE, seed=0)
    x = np.random.default_rng(0).standard_normal((4,) + SHAPE).astype(np.float32)
    y = np.array([0, 1, 2, 0])
    model.forward_backward(x, y)
    before = {(i, k): id(v) for i, lay in enumerate(model.layers)
              for k, v in lay._scratch.items()}
    model.forward_backward(x, y)
    after = {(i, k): id(v) for i, lay in enumerate(model.layers)
             for k, v in lay._scratch.items()}
    assert after == before


def reference_maxpool2(x):
    """2x2/2 max pool by NumPy: the first maximum of each window in raster order."""
    n, h, w, c = x.shape
    win = x.reshape(n, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    win = win.reshape(n, h // 2, w // 2, 4, c)
    return win.max(axis=3), win.argmax(axis=3).astype(np.int32)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_2x2_max_pool_kernels_route_exactly(dtype):
    rng = np.random.default_rng(4)
    # Ties (many zeros, as after a ReLU) and negative zeros in both directions.
    x = np.maximum(rng.standard_normal((3, 6, 8, 5)), 0).astype(dtype)
    x[0, 0, 0, 0], x[0, 0, 1, 0] = -0.0, 0.0
    out = np.empty((3, 3, 4, 5), dtype)
    arg = np.empty(out.shape, np.int32)
    kernels.maxpool_forward(x, out, arg, 2, 2)
    want_out, want_arg = reference_maxpool2(x)
    np.testing.assert_array_equal(out, want_out)
    np.testing.assert_array_equal(arg, want_arg)
    dout = rng.standard_normal(out.shape).astype(dtype)
    dout[1, 1, 1, 1] = -0.0
    dx = np.full(x.shape, 7.0, dtype)
    kernels.maxpool_backward(dout, arg, dx, 2, 2)
    general = np.full(x.shape, 7.0, dtype)
    kernels._maxpool_backward(dout, arg, general, 2, 2)  # the any-window loop
    np.testing.assert_array_equal(dx.view(np.uint8), general.view(np.uint8))  # signs of 0 too


def test_pools_split_over_threads_give_the_same_bits():
    x = np.random.default_rng(6).standard_normal((9, 8, 8, 3)).astype(np.float32)
    dout = np.random.default_rng(7).standard_normal((9, 4, 4, 3)).astype(np.float32)
    got = []
    for count in (1, 2, 4):
        with threads.limit(count):
            for spec in (POOL, {"type": "avgpool", "size": 2}):
                model = Sequential([spec], (8, 8, 3), input_grad=True)
                pool = model.layers[0]
                got.append((pool.forward(x, True).copy(), pool.backward(dout).copy()))
    for a, b in zip(got[:2] * 2, got[2:], strict=True):
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])


@pytest.mark.parametrize("filters", [1, 2, 3, 4, 6, 7, 10])
def test_the_weight_gradient_blocks_match_a_plain_sum(filters):
    rng = np.random.default_rng(filters)
    c, h, wp = 3, 5, 7
    m = h * wp
    a = rng.standard_normal((c, m + 2 * wp + 2))
    d = rng.standard_normal((filters, m + wp + 1))
    dw = np.zeros((c, 3, 3, filters))
    direct.correlate_grad(a, d, wp + 1, dw, wp, m)
    want = np.einsum("ikp,jp->ikj", np.stack(
        [a[:, ky * wp + kx:ky * wp + kx + m] for ky in range(3) for kx in range(3)], axis=1),
        d[:, wp + 1:wp + 1 + m]).reshape(c, 3, 3, filters)
    np.testing.assert_allclose(dw, want, rtol=1e-12, atol=1e-12)
