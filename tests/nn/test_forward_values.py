"""Forward values (and the matching backward values) of every layer at hand-computed points.

Gradient checks only prove that a layer's backward pass agrees with its own forward pass; a
wrong constant or scale in the forward pass passes them. Here every expectation is computed
independently of distnn: by hand (the arithmetic is in a comment) or by a small float64 NumPy
reference written from the math with explicit loops. Dropout, BatchNorm, losses, L2 and init are
in test_model_values.py.
"""

import math

import numpy as np
import pytest

from distnn.nn import Sequential, SpecError

DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 1e-6}  # relative to the largest expected magnitude


def model_of(specs, in_shape, dtype=np.float64, first=False):
    """A model whose layers under test are not the first one (unless `first`): a leading
    dropout of rate 0 (the identity) makes them compute their input gradient."""
    lead = [] if first else [{"type": "dropout", "rate": 0.0}]
    return Sequential(lead + list(specs), in_shape, dtype=dtype)


def run(model, x, dout, training=True):
    """Forward through every layer, then backward through every layer but the leading one:
    (output copy, d(input))."""
    y = x
    for layer in model.layers:
        y = layer.forward(y, training)
    out = y.copy()
    d = np.array(dout, dtype=model.dtype)
    for layer in reversed(model.layers[1:]):
        d = layer.backward(d)
    return out, d


def close(got, want, dtype):
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = float(np.abs(got.astype(np.float64) - want).max(initial=0.0))
    assert err <= TOL[np.dtype(dtype).type] * scale, (err, got, want)


# -- Dense, Flatten, fused ReLU ---------------------------------------------------------------
X_DENSE = [[1, 2, 3], [-1, 0, 2]]
W_DENSE = [[1, 0], [0, 1], [1, -1]]  # (D=3, U=2): not square, so x@W cannot be confused


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_forward_and_backward_by_hand(dtype):
    model = model_of([{"type": "dense", "units": 2}], (3,), dtype)
    dense = model.layers[1]
    dense.p["W"][...] = W_DENSE
    dense.p["b"][...] = [10, 20]
    out, dx = run(model, np.array(X_DENSE, dtype), [[1, 2], [3, -1]])
    # row 0: [1 + 3 + 10, 2 - 3 + 20]; row 1: [-1 + 2 + 10, -2 + 20]
    close(out, [[14, 19], [11, 18]], dtype)
    # dW = x^T dout: [1*1 + -1*3, 1*2 + -1*-1], [2*1 + 0, 2*2 + 0], [3*1 + 2*3, 3*2 + 2*-1]
    close(dense.g["W"], [[-2, 3], [2, 4], [9, 4]], dtype)
    close(dense.g["b"], [4, 1], dtype)  # column sums of dout
    # dx = dout W^T: row 0 [1, 2, 1 - 2], row 1 [3, -1, 3 + 1]
    close(dx, [[1, 2, -1], [3, -1, 4]], dtype)


def test_relu_fusion_flags():
    model = model_of([{"type": "dense", "units": 2}], (3,))
    assert not model.layers[1].fuse_relu
    model = model_of([{"type": "dense", "units": 2}, {"type": "relu"}], (3,))
    dense, relu = model.layers[1:]
    assert dense.fuse_relu and relu.fused and not relu.fused_backward
    model = model_of([{"type": "conv", "filters": 2}, {"type": "relu"}], (4, 4, 1))
    conv, relu = model.layers[1:]
    assert conv.fuse_relu and relu.fused and relu.fused_backward
    model = model_of([{"type": "flatten"}, {"type": "relu"}], (2, 2, 1))
    assert not model.layers[2].fused


@pytest.mark.parametrize("dtype", DTYPES)
def test_fused_dense_relu_equals_unfused_math(dtype):
    model = model_of([{"type": "dense", "units": 2}, {"type": "relu"}], (3,), dtype)
    dense = model.layers[1]
    dense.p["W"][...] = W_DENSE
    dense.p["b"][...] = [-4, 2]
    out, dx = run(model, np.array(X_DENSE, dtype), [[1, 1], [1, 1]])
    # x @ W: row 0 [1 + 3, 2 - 3] = [4, -1], row 1 [-1 + 2, -2] = [1, -2]
    # pre-activations: row 0 [4 - 4, -1 + 2] = [0, 1]; row 1 [1 - 4, -2 + 2] = [-3, 0]
    close(out, [[0, 1], [0, 0]], dtype)
    # ReLU'(0) = 0: only (0, 1) passes the gradient. dW = x^T mask, db = [0, 1], dx = mask W^T
    close(dense.g["W"], [[0, 1], [0, 2], [0, 3]], dtype)
    close(dense.g["b"], [0, 1], dtype)
    close(dx, [[0, 1, -1], [0, 0, 0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_flatten_is_nhwc_order(dtype):
    model = model_of([{"type": "flatten"}], (2, 3, 2), dtype)
    x = np.arange(24, dtype=dtype).reshape(2, 2, 3, 2)  # x[n, h, w, c] = 12n + 6h + 2w + c
    out, dx = run(model, x, np.arange(24).reshape(2, 12) * 10)
    assert model.layers[1].out_shape == (12,)
    # feature (h * W + w) * C + c holds x[n, h, w, c]: for this x, 12n + that index
    close(out, [list(range(12)), list(range(12, 24))], dtype)
    close(dx, x * 10, dtype)


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


# -- Pooling -------------------------------------------------------------------------------------
def maxpool_ref(x, size, stride, dout):
    """out = window maxima; dx = dout routed to the FIRST maximum of each window in raster
    order (np.argmax of the row-major flattened window returns the first)."""
    n, h, w, c = x.shape
    ho, wo = (h - size) // stride + 1, (w - size) // stride + 1
    out, dx = np.zeros((n, ho, wo, c)), np.zeros(x.shape)
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    win = x[b, i * stride:i * stride + size, j * stride:j * stride + size, ch]
                    k = int(np.argmax(win))
                    out[b, i, j, ch] = win.flat[k]
                    dx[b, i * stride + k // size, j * stride + k % size, ch] += dout[b, i, j, ch]
    return out, dx


def avgpool_ref(x, size, stride, dout):
    n, h, w, c = x.shape
    ho, wo = (h - size) // stride + 1, (w - size) // stride + 1
    out, dx = np.zeros((n, ho, wo, c)), np.zeros(x.shape)
    for i in range(ho):
        for j in range(wo):
            rows, cols = slice(i * stride, i * stride + size), slice(j * stride, j * stride + size)
            out[:, i, j] = x[:, rows, cols].sum(axis=(1, 2)) / size**2
            dx[:, rows, cols] += dout[:, i, j][:, None, None, :] / size**2
    return out, dx


POOL_CASES = [  # (size, stride, per-sample input shape); stride None: the default (= size)
    (2, 2, (4, 6, 3)),  # the 2x2 fast path
    (2, None, (2, 4, 1)),
    (3, 3, (6, 6, 2)),  # tiled windows, general loop
    (3, 1, (5, 5, 2)),  # overlapping windows
    (2, 1, (4, 5, 2)),
    (3, 2, (7, 5, 2)),
]


@pytest.mark.parametrize("kind", ["maxpool", "avgpool"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,stride,in_shape", POOL_CASES)
def test_pool_matches_loop_reference(size, stride, in_shape, dtype, kind):
    spec = {"type": kind, "size": size}
    if stride is not None:
        spec["stride"] = stride
    model = model_of([spec], in_shape, dtype)
    rng = np.random.default_rng(size * 10 + (stride or 0))
    x = rng.integers(0, 3, (2,) + in_shape).astype(np.float64)  # many ties
    s = size if stride is None else stride
    dout = rng.integers(1, 5, (2,) + model.layers[1].out_shape).astype(np.float64)
    ref, dx_ref = (maxpool_ref if kind == "maxpool" else avgpool_ref)(x, size, s, dout)
    out, dx = run(model, x.astype(dtype), dout)
    close(out, ref, dtype)
    close(dx, dx_ref, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("size,stride", [(2, 2), (2, 1)])
def test_maxpool_ties_by_hand(size, stride, dtype):
    # Channel 0 of a 4x4 map; windows of the 2x2/2 pool: [[5, 5], [5, 5]], [[1, 7], [7, 2]],
    # [[3, 1], [9, 9]], [[-1, -2], [-3, -1]]. The first maximum in raster order wins.
    ch0 = np.array([[5, 5, 1, 7], [5, 5, 7, 2], [3, 1, -1, -2], [9, 9, -3, -1]])
    x = np.stack([ch0, -ch0], axis=-1)[None].astype(dtype)  # channel 1: the negation
    model = model_of([{"type": "maxpool", "size": size, "stride": stride}], (4, 4, 2), dtype)
    ho = (4 - size) // stride + 1
    dout = np.arange(1, ho * ho * 2 + 1).reshape(1, ho, ho, 2)
    out, dx = run(model, x, dout)
    if stride == 2:
        close(out[0, :, :, 0], [[5, 7], [9, -1]], dtype)
        close(out[0, :, :, 1], [[-5, -1], [-1, 3]], dtype)  # maxima of -ch0
        # d(out) channel 0 = [[1, 3], [5, 7]] goes to (0,0), (0,3), (3,0), (2,2)
        want0 = np.zeros((4, 4))
        want0[0, 0], want0[0, 3], want0[3, 0], want0[2, 2] = 1, 3, 5, 7
        close(dx[0, :, :, 0], want0, dtype)
        # channel 1 = [[2, 4], [6, 8]]: -ch0 windows [[-5]*4] -> (0,0); [[-1, -7], [-7, -2]]
        # -> (0,2); [[-3, -1], [-9, -9]] -> (2,1); [[1, 2], [3, 1]] -> (3,2)
        want1 = np.zeros((4, 4))
        want1[0, 0], want1[0, 2], want1[2, 1], want1[3, 2] = 2, 4, 6, 8
        close(dx[0, :, :, 1], want1, dtype)
    else:
        # overlapping 3x3 grid of 2x2 windows of ch0 (first maxima at the positions noted)
        close(out[0, :, :, 0], [[5, 7, 7], [5, 7, 7], [9, 9, -1]], dtype)
        d0 = dout[0, :, :, 0]  # [[1, 3, 5], [7, 9, 11], [13, 15, 17]]
        want0 = np.zeros((4, 4))
        want0[0, 0] += d0[0, 0]  # [[5, 5], [5, 5]]: (0,0)
        want0[1, 2] += d0[0, 1]  # [[5, 1], [5, 7]]: (1,2)
        want0[0, 3] += d0[0, 2]  # [[1, 7], [7, 2]]: (0,3) before (1,2)
        want0[1, 0] += d0[1, 0]  # [[5, 5], [3, 1]]: (1,0)
        want0[1, 2] += d0[1, 1]  # [[5, 7], [1, -1]]: (1,2)
        want0[1, 2] += d0[1, 2]  # [[7, 2], [-1, -2]]: (1,2)
        want0[3, 0] += d0[2, 0]  # [[3, 1], [9, 9]]: (3,0) before (3,1)
        want0[3, 1] += d0[2, 1]  # [[1, -1], [9, -3]]: (3,1)
        want0[2, 2] += d0[2, 2]  # [[-1, -2], [-3, -1]]: (2,2) before (3,3)
        close(dx[0, :, :, 0], want0, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_avgpool_and_global_avgpool_by_hand(dtype):
    x = np.zeros((1, 2, 2, 2), dtype)
    x[0, :, :, 0] = [[1, 2], [3, 4]]
    x[0, :, :, 1] = [[0, 0], [0, 8]]
    out, dx = run(model_of([{"type": "avgpool"}], (2, 2, 2), dtype), x, [[[[4, 8]]]])
    close(out, [[[[2.5, 2]]]], dtype)  # (1 + 2 + 3 + 4) / 4, 8 / 4
    close(dx[0].reshape(4, 2), [[1, 2]] * 4, dtype)  # d(out) / 4 to each of the 4 inputs
    model = model_of([{"type": "globalavgpool"}], (2, 2, 2), dtype)
    out, dx = run(model, x, [[4, 8]])
    assert model.layers[1].out_shape == (2,)
    close(out, [[2.5, 2]], dtype)
    close(dx[0].reshape(4, 2), [[1, 2]] * 4, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_global_avgpool_rectangular(dtype):
    x = np.arange(2 * 2 * 3 * 2, dtype=dtype).reshape(2, 2, 3, 2)  # x[n,h,w,c] = 12n+6h+2w+c
    out, dx = run(model_of([{"type": "globalavgpool"}], (2, 3, 2), dtype), x, [[6, 12], [0, 3]])
    # mean over h in {0,1}, w in {0,1,2}: 12n + 6*0.5 + 2*1 + c = 12n + 5 + c
    close(out, [[5, 6], [17, 18]], dtype)
    close(dx[0, 1, 2], [1, 2], dtype)  # d(out) / 6
    close(dx[1, 0, 0], [0, 0.5], dtype)


# -- Activations ---------------------------------------------------------------------------------
L2, L3 = math.log(2), math.log(3)
ACTIVATION_CASES = {  # spec: (inputs, outputs, derivatives), by hand
    # max(0, x); ReLU'(0) = 0
    "relu": ([-2, 0, 3], [0, 0, 3], [0, 0, 1]),
    # alpha defaults to 0.01; the derivative at 0 is alpha (x > 0 is the linear side)
    "leaky_relu": ([-2, 0, 3], [-0.02, 0, 3], [0.01, 0.01, 1]),
    "leaky_relu alpha=0.3": ([-2, 0, 3], [-0.6, 0, 3], [0.3, 0.3, 1]),
    # alpha defaults to 1: ELU(-ln 2) = e^-ln2 - 1 = -0.5, ELU' = alpha e^x = 0.5; ELU'(0) = alpha
    "elu": ([-L2, 0, 3], [-0.5, 0, 3], [0.5, 1, 1]),
    # alpha = 2: 2 (0.5 - 1) = -1, ELU' = 2 * 0.5 = 1; ELU(-ln 4) = 2 (1/4 - 1), ELU' = 2/4
    "elu alpha=2": ([-2 * L2, -L2, 0, 3], [-1.5, -1, 0, 3], [0.5, 1, 2, 1]),
    # tanh(ln 2) = (4 - 1) / (4 + 1) = 0.6, tanh' = 1 - 0.36
    "tanh": ([-L2, 0, L2], [-0.6, 0, 0.6], [0.64, 1, 0.64]),
    # sigmoid(ln 3) = 3 / 4, sigmoid' = 3/4 * 1/4
    "sigmoid": ([-L3, 0, L3], [0.25, 0.5, 0.75], [3 / 16, 0.25, 3 / 16]),
}


def activation_spec(key):
    kind, *rest = key.split()
    spec = {"type": kind}
    for item in rest:
        k, v = item.split("=")
        spec[k] = float(v)
    return spec


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("key", list(ACTIVATION_CASES))
def test_activation_values_and_derivatives(key, dtype):
    xs, ys, ds = ACTIVATION_CASES[key]
    model = model_of([activation_spec(key)], (len(xs),), dtype)
    x = np.array([xs], dtype)
    out, dx = run(model, x, np.ones_like(x))
    close(out, [ys], dtype)
    close(dx, [ds], dtype)
    out, dx = run(model, x, 2 * np.ones_like(x))
    close(dx, [[2 * d for d in ds]], dtype)  # the derivative scales d(out), it is not d(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("spec,big_out,big_d", [
    ({"type": "sigmoid"}, [0, 1], [0, 0]),
    ({"type": "tanh"}, [-1, 1], [0, 0]),
    ({"type": "elu"}, [-1, 1e4], [0, 1]),
    ({"type": "elu", "alpha": 0.5}, [-0.5, 1e4], [0, 1]),
    ({"type": "leaky_relu"}, [-100, 1e4], [0.01, 1]),
])
def test_activations_at_plus_minus_1e4_are_finite(spec, big_out, big_d, dtype):
    # (pytest turns any overflow RuntimeWarning into a failure)
    x = np.array([[-1e4, 1e4]], dtype)
    out, dx = run(model_of([spec], (2,), dtype), x, np.ones_like(x))
    assert np.isfinite(out).all() and np.isfinite(dx).all()
    close(out, [big_out], dtype)
    close(dx, [big_d], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_groups_consecutive_features(dtype):
    model = model_of([{"type": "maxout"}], (6,), dtype)  # k defaults to 2
    x = np.array([[1, 3, -2, -5, 4, 4], [1, 5, 3, 2, 0, -1]], dtype)
    out, dx = run(model, x, [[10, 20, 30], [40, 50, 60]])
    # groups (x0, x1), (x2, x3), (x4, x5): a tie goes to the first
    close(out, [[3, -2, 4], [5, 3, 0]], dtype)
    close(dx, [[0, 10, 20, 0, 30, 0], [0, 40, 50, 0, 60, 0]], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_maxout_k3_on_maps(dtype):
    model = model_of([{"type": "maxout", "k": 3}], (1, 2, 6), dtype)
    assert model.layers[1].out_shape == (1, 2, 2)
    x = np.array([[1, 3, 2, 0, -1, 0], [7, 7, 7, -4, -6, -5]], dtype).reshape(1, 1, 2, 6)
    out, dx = run(model, x, np.array([[1, 2], [3, 4]]).reshape(1, 1, 2, 2))
    # pixel 0: max(1, 3, 2) = 3 at 1, max(0, -1, 0) = 0 at 3 (first); pixel 1: 7 at 0, -4 at 3
    close(out.reshape(2, 2), [[3, 0], [7, -4]], dtype)
    close(dx.reshape(2, 6), [[0, 1, 0, 2, 0, 0], [3, 0, 0, 4, 0, 0]], dtype)
