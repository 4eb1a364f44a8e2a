"""nn/conv/common.py: the group sums and the bias gradient the conv algorithms share, on the
thread pool with the same bits on any thread count."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.nn import Sequential, threads
from distnn.nn.conv import common


def serial_sum(parts):
    out = parts[0].copy()
    for part in parts[1:]:
        out += part
    return out


@pytest.mark.parametrize("count", [1, 2, 3])
@pytest.mark.parametrize("shape", [(16, 36, 64, 64), (5, 7), (3, common.SUM_PIECE + 5)])
def test_sum_groups_adds_in_group_order_on_any_thread_count(count, shape):
    rng = np.random.default_rng(0)
    # Values of very different sizes: any other order of the additions changes the bits.
    parts = (rng.standard_normal(shape) * 10.0 ** rng.integers(-6, 6, shape)).astype(np.float32)
    out = np.empty(shape[1:], np.float32)
    with threads.limit(count):
        common.sum_groups(parts, out)
    np.testing.assert_array_equal(out, serial_sum(parts))
    assert not np.array_equal(out, serial_sum(parts[::-1]))


def test_sum_groups_into_a_strided_view():
    parts = np.random.default_rng(1).standard_normal((4, 6, 8))
    out = np.zeros((6, 16))
    common.sum_groups(parts, out[:, ::2])
    np.testing.assert_array_equal(out[:, ::2], serial_sum(parts))
    assert not out[:, 1::2].any()


@pytest.mark.parametrize("algorithm", ["winograd4", "im2col"])
@pytest.mark.parametrize("relu", [False, True])
def test_bias_gradient_and_mask_on_any_thread_count(relu, algorithm):
    """A conv's bias gradient (the column sums of the masked d(out), float64 per chunk in
    Winograd's tasks, per group of images in common.bias_grad for im2col) against NumPy in
    float64, and equal bits in float32 on 1, 2 and 3 threads."""
    specs = [{"type": "conv", "filters": 16, "kernel": 3, "pad": 1}] + \
        ([{"type": "relu"}] if relu else [])
    got = {}
    for dtype, count in ((np.float64, 2), (np.float32, 1), (np.float32, 2), (np.float32, 3)):
        model = Sequential(specs, (8, 8, 16), seed=0, dtype=dtype)
        model.layers[0].algorithm = algorithm
        rng = np.random.default_rng(2)
        x = rng.standard_normal((20, 8, 8, 16)).astype(dtype)
        dout = rng.standard_normal((20, 8, 8, 16)).astype(dtype)
        with threads.limit(count):
            out = model.forward(x, True).copy()
            model.backward(dout)
        got[(dtype, count)] = model.layers[0].g["b"].copy()
        if dtype == np.float64:
            want = np.where(out > 0, dout, 0) if relu else dout
            np.testing.assert_allclose(got[(dtype, count)], want.sum(axis=(0, 1, 2)),
                                       rtol=1e-12, atol=1e-12)
    for count in (2, 3):
        np.testing.assert_array_equal(got[(np.float32, count)], got[(np.float32, 1)])
