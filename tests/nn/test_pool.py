"""Max pooling against a NumPy reference: the first maximum of each window in raster order
wins (ties included), and the backward pass routes d(out) to it alone."""

import numpy as np
import pytest

from distnn.nn import Sequential


def reference(x, size, stride):
    n, h, w, c = x.shape
    ho, wo = (h - size) // stride + 1, (w - size) // stride + 1
    windows = np.empty((n, ho, wo, c, size * size), x.dtype)
    for i in range(ho):
        for j in range(wo):
            win = x[:, i * stride:i * stride + size, j * stride:j * stride + size]
            windows[:, i, j] = win.reshape(n, size * size, c).transpose(0, 2, 1)
    arg = windows.argmax(axis=-1)  # the first maximum in raster order
    return windows.max(axis=-1), arg


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("in_shape,size,stride", [
    ((8, 6, 10), 2, 2),  # the 2x2/2 kernel
    ((4, 4, 3), 2, 2),
    ((2, 2, 1), 2, 2),
    ((7, 7, 3), 3, 2),  # the general loop, overlapping windows
    ((5, 5, 2), 2, 1),
])
def test_maxpool_matches_reference_with_ties(in_shape, size, stride, dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(-2, 3, (3,) + in_shape).astype(dtype)  # many tied windows
    model = Sequential([dict(type="maxpool", size=size, stride=stride)], in_shape, dtype=dtype)
    out = model.forward(x, True)
    ref, arg = reference(x, size, stride)
    np.testing.assert_array_equal(out, ref)
    d = rng.standard_normal(out.shape).astype(dtype)
    dx = model.layers[0].backward(d)
    expect = np.zeros_like(x)
    n, ho, wo, c = out.shape
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    p, q = divmod(int(arg[b, i, j, ch]), size)
                    expect[b, i * stride + p, j * stride + q, ch] += d[b, i, j, ch]
    np.testing.assert_array_equal(dx, expect)


def test_maxpool_takes_a_non_contiguous_input():
    x = np.random.default_rng(1).standard_normal((2, 8, 8, 6))[..., ::2]  # strided channels
    model = Sequential([dict(type="maxpool", size=2)], (8, 8, 3), dtype=np.float64)
    np.testing.assert_array_equal(model.forward(x, True), reference(x, 2, 2)[0])
