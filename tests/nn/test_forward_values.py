"""Forward values (and the matching backward values) of every layer at hand-computed points.

Gradient checks only prove that a layer's backward pass agrees with its own forward pass; a
wrong constant or scale in the forward pass passes them. Here every expectation is computed
independently of distnn: by hand (the arithmetic is in a comment) or by a small float64 NumPy
reference written from the math with explicit loops. Dropout, BatchNorm, losses, L2 and init are
in test_model_values.py, Conv2D in test_conv_values.py.
"""

import math

import numpy as np
import pytest

from distnn.nn import Sequential

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
