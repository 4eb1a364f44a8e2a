"""Conv2D's forward and backward values: every algorithm that fits a shape against an
explicit-loop float64 reference, hand cases, the choice of algorithm, and a conv as the first
layer (split from test_forward_values.py, whose helpers it uses)."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.nn import Sequential, SpecError
from tests.nn.test_forward_values import DTYPES, close, model_of, run


# -- Conv2D, every algorithm against an explicit-loop reference --------------------------------
def conv_ref(x, w, b, stride, pad):
    """out[n, i, j, f] = b[f] + sum_{p, q, c} xpad[n, i*s + p, j*s + q, c] * w[p, q, c, f]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c))
    xp[:, pad:pad + h, pad:pad + wd] = x
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, ho, wo, f))
    for i in range(ho):
        for j in range(wo):
            for p in range(kh):
                for q in range(kw):
                    out[:, i, j] += xp[:, i * stride + p, j * stride + q] @ w[p, q]
    return out + np.asarray(b, np.float64)


def conv_grad_ref(x, w, dout, stride, pad):
    """(dW, db, dx) of conv_ref for d(loss)/d(out) = dout."""
    x, w, dout = (np.asarray(a, np.float64) for a in (x, w, dout))
    n, h, wd, c = x.shape
    kh, kw, _, f = w.shape
    xp = np.zeros((n, h + 2 * pad, wd + 2 * pad, c))
    xp[:, pad:pad + h, pad:pad + wd] = x
    dxp, dw = np.zeros_like(xp), np.zeros_like(w)
    for i in range(dout.shape[1]):
        for j in range(dout.shape[2]):
            for p in range(kh):
                for q in range(kw):
                    y, z = i * stride + p, j * stride + q
                    dw[p, q] += xp[:, y, z].T @ dout[:, i, j]
                    dxp[:, y, z] += dout[:, i, j] @ w[p, q].T
    return dw, dout.sum(axis=(0, 1, 2)), dxp[:, pad:pad + h, pad:pad + wd]


ALL = ("winograd", "direct", "im2col")
CONV_CASES = {  # name: (per-sample input shape, filters, kernel, stride, pad, batch, fitting)
    "3x3p1-odd": ((5, 6, 2), 3, 3, 1, 1, 2, ("direct", "im2col")),
    "3x3p1-even": ((6, 4, 3), 2, 3, 1, 1, 2, ALL),
    "3x3p0": ((4, 6, 2), 3, 3, 1, 0, 2, ALL),
    "3x3p2-odd": ((5, 5, 1), 2, 3, 1, 2, 2, ("direct", "im2col")),
    "3x3p2-even": ((6, 6, 2), 2, 3, 1, 2, 2, ALL),
    "3x3p3": ((6, 6, 1), 2, 3, 1, 3, 2, ("winograd", "im2col")),
    "3x3s2p1": ((7, 7, 2), 3, 3, 2, 1, 2, ("im2col",)),
    "2x2": ((6, 5, 2), 2, 2, 1, 0, 2, ("im2col",)),
    "5x5s2p2": ((9, 9, 1), 2, 5, 2, 2, 2, ("im2col",)),
    "1x1": ((4, 4, 3), 2, 1, 1, 0, 2, ("im2col",)),
    "chunked": ((20, 20, 1), 2, 3, 1, 1, 3, ALL),  # 400 outputs/image: 2 chunks of images
    "wide16": ((4, 4, 16), 16, 3, 1, 1, 2, ALL),  # Winograd by default
    "2x2-output": ((2, 2, 2), 3, 3, 1, 1, 2, ALL),  # one Winograd tile per image
}
CONV_RUNS = [(name, alg) for name, case in CONV_CASES.items() for alg in case[-1]]


def conv_data(name):
    """Small integers: every sum is exact in float32 too (Winograd's halves included)."""
    in_shape, filters, kernel, stride, pad, batch, _ = CONV_CASES[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    x = rng.integers(-3, 4, (batch,) + in_shape).astype(np.float64)
    w = rng.integers(-2, 3, (kernel, kernel, in_shape[2], filters)).astype(np.float64)
    b = rng.integers(-3, 4, filters).astype(np.float64)
    ref = conv_ref(x, w, b, stride, pad)
    dout = rng.integers(-2, 3, ref.shape).astype(np.float64)
    return x, w, b, ref, dout


def conv_model(name, dtype, relu, first=False):
    in_shape, filters, kernel, stride, pad, _, _ = CONV_CASES[name]
    spec = [{"type": "conv", "filters": filters, "kernel": kernel, "stride": stride, "pad": pad}]
    return model_of(spec + ([{"type": "relu"}] if relu else []), in_shape, dtype, first)


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name,algorithm", CONV_RUNS)
def test_conv_matches_loop_reference(name, algorithm, dtype, relu):
    stride, pad = CONV_CASES[name][3:5]
    x, w, b, ref, dout = conv_data(name)
    model = conv_model(name, dtype, relu)
    conv = model.layers[1]
    conv.algorithm = algorithm
    assert conv.algorithm == algorithm
    conv.p["W"][...] = w
    conv.p["b"][...] = b
    out, dx = run(model, x.astype(dtype), dout)
    if relu:
        mask = ref > 0  # ReLU'(0) = 0
        ref, dout = ref * mask, dout * mask
    dw, db, dx_ref = conv_grad_ref(x, w, dout, stride, pad)
    close(out, ref, dtype)
    close(conv.g["W"], dw, dtype)
    close(conv.g["b"], db, dtype)
    close(dx, dx_ref, dtype)


@pytest.mark.parametrize("name", list(CONV_CASES))
def test_conv_algorithms_that_fit(name):
    conv = conv_model(name, np.float64, False).layers[1]
    fitting = CONV_CASES[name][-1]
    for alg in ALL:
        if alg in fitting:
            conv.algorithm = alg
        else:
            with pytest.raises(SpecError):
                conv.algorithm = alg


@pytest.mark.parametrize("in_shape,filters,pad,kernel,stride,expected", [
    ((4, 4, 16), 16, 1, 3, 1, "winograd"),  # >= 16 channels and filters, even 4x4 output
    ((4, 4, 15), 16, 1, 3, 1, "direct"),  # 15 channels: thin
    ((4, 4, 16), 15, 1, 3, 1, "direct"),  # 15 filters: thin
    ((5, 5, 16), 16, 1, 3, 1, "im2col"),  # wide but odd 5x5 output: no Winograd
    ((6, 6, 3), 4, 2, 3, 1, "direct"),  # padding 2 still direct
    ((6, 6, 3), 4, 3, 3, 1, "im2col"),  # padding 3: not direct
    ((7, 7, 3), 4, 1, 3, 2, "im2col"),  # stride 2
    ((6, 6, 3), 4, 0, 2, 1, "im2col"),  # 2x2 kernel
])
def test_conv_default_algorithm(in_shape, filters, pad, kernel, stride, expected):
    spec = {"type": "conv", "filters": filters, "kernel": kernel, "stride": stride, "pad": pad}
    assert model_of([spec], in_shape).layers[1].algorithm == expected


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", ALL)
def test_conv_by_hand_box_filter(algorithm, dtype):
    model = model_of([{"type": "conv", "filters": 1, "pad": 1}], (4, 4, 1), dtype)
    conv = model.layers[1]
    conv.algorithm = algorithm
    conv.p["W"][...] = 1.0
    conv.p["b"][...] = 0.5
    out, dx = run(model, np.ones((1, 4, 4, 1), dtype), np.ones((1, 4, 4, 1)))
    # A 3x3 box sum of ones with zero padding: 4 at corners, 6 on edges, 9 inside; + 0.5.
    box = np.array([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]])
    close(out[0, :, :, 0], box + 0.5, dtype)
    close(dx[0, :, :, 0], box, dtype)  # the same box sum of d(out) = ones
    # dW[p, q] = number of outputs whose tap (p, q) lands inside the 4x4 input: 4x4 at the
    # centre, 3x4 or 4x3 on the edges, 3x3 at the corners
    close(conv.g["W"][:, :, 0, 0], [[9, 12, 9], [12, 16, 12], [9, 12, 9]], dtype)
    close(conv.g["b"], [16], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_conv_by_hand_is_correlation_not_convolution(dtype):
    model = model_of([{"type": "conv", "filters": 2, "kernel": 2}], (3, 3, 1), dtype)
    conv = model.layers[1]
    conv.p["W"][:, :, 0, 0] = [[1, 0], [0, -1]]  # filter 0: x[i, j] - x[i+1, j+1]
    conv.p["W"][:, :, 0, 1] = [[0, 2], [0, 0]]  # filter 1: 2 * x[i, j+1]
    conv.p["b"][...] = [0.5, -1]
    x = np.arange(9, dtype=dtype).reshape(1, 3, 3, 1)  # x[i, j] = 3i + j
    out, _ = run(model, x, np.zeros((1, 2, 2, 2)))
    # filter 0: 3i + j - (3i + 3 + j + 1) = -4, + 0.5; filter 1: 2 * (3i + j + 1) - 1
    close(out[0, :, :, 0], [[-3.5, -3.5], [-3.5, -3.5]], dtype)
    close(out[0, :, :, 1], [[1, 3], [7, 9]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("algorithm", [None, "winograd", "im2col", "direct"])
def test_conv_as_first_layer(algorithm, dtype):
    """The first layer computes no input gradient and must keep its own copy of the input
    for backward (the caller's array may change in between)."""
    spec = [{"type": "conv", "filters": 4, "pad": 1}, {"type": "relu"}]
    model = Sequential(spec, (6, 6, 3), dtype=dtype)
    conv = model.layers[0]
    assert conv.algorithm == "direct"  # the default for 3 channels
    if algorithm:
        conv.algorithm = algorithm
    rng = np.random.default_rng(5)
    x = rng.integers(-3, 4, (2, 6, 6, 3)).astype(np.float64)
    w = rng.integers(-2, 3, (3, 3, 3, 4)).astype(np.float64)
    b = np.array([-1.0, 0.0, 1.0, 2.0])
    dout = rng.integers(-2, 3, (2, 6, 6, 4)).astype(np.float64)
    conv.p["W"][...], conv.p["b"][...] = w, b
    xin = x.astype(dtype)
    out = model.forward(xin, training=True).copy()
    xin[...] = 99.0  # the caller reuses its array before backward
    model.backward(dout.astype(dtype))
    ref = conv_ref(x, w, b, 1, 1)
    mask = ref > 0
    dw, db, _ = conv_grad_ref(x, w, dout * mask, 1, 1)
    close(out, ref * mask, dtype)
    close(conv.g["W"], dw, dtype)
    close(conv.g["b"], db, dtype)
    assert conv.backward(dout.astype(dtype)) is None
