"""Work buffers: their shapes, and which layers reuse one buffer from step to step (no per-step
allocation) or hand their input straight through (no copy)."""

import numpy as np

from distnn.nn import Dropout, ReLU
from distnn.nn.direct import buffer_shapes


def test_direct_buffer_shapes_even_counts():
    # 4 channels, 4 filters, 5x4 images, pad 1: rows of width wp = 4 + 2 = 6, ho = 5 + 2 - 2 = 5;
    # the padded image has h + 2 pad + 1 = 8 rows, dz h + 3 = 8 rows; even/odd split 2 + 2.
    assert buffer_shapes(2, (5, 4, 4), 4, 1) == {
        "planar": (2, 4, 48), "dz": (4, 48),
        "o_even": (2, 30), "o_odd": (2, 30),
        "ox_even": (2, 30), "ox_odd": (2, 30)}


def test_direct_buffer_shapes_odd_counts():
    # 3 channels, 5 filters, 3x3 images, pad 0: wp = 3, ho = 1; planar 4 rows, dz 6 rows;
    # 5 filters split 3 even + 2 odd, 3 channels 2 even + 1 odd.
    assert buffer_shapes(1, (3, 3, 3), 5, 0) == {
        "planar": (1, 3, 12), "dz": (5, 18),
        "o_even": (3, 3), "o_odd": (2, 3),
        "ox_even": (2, 9), "ox_odd": (1, 9)}


def built(layer, in_shape):
    layer.build(in_shape, np.float64)
    return layer


def test_relu_reuses_its_output_buffer():
    relu = built(ReLU(), (3,))
    first = relu.forward(np.array([[-1.0, 2.0, 0.5]]), True)
    np.testing.assert_array_equal(first, [[0.0, 2.0, 0.5]])
    second = relu.forward(np.array([[4.0, -3.0, 1.0]]), True)
    assert second is first  # one buffer for every step of this shape
    np.testing.assert_array_equal(second, [[4.0, 0.0, 1.0]])
    dx = relu.backward(np.array([[1.0, 1.0, 1.0]]))
    np.testing.assert_array_equal(dx, [[1.0, 0.0, 1.0]])


def test_dropout_of_rate_zero_passes_arrays_through_in_training():
    layer = built(Dropout(0.0), (2, 2))
    draws = layer.rng.bit_generator.state
    x = np.arange(8.0).reshape(2, 2, 2)
    assert layer.forward(x, True) is x
    dout = np.ones((2, 2, 2))
    assert layer.backward(dout) is dout
    assert layer.rng.bit_generator.state == draws  # no random numbers drawn


def test_a_buffer_has_the_dtype_asked_for_else_the_layers():
    relu = ReLU()
    relu.dtype = np.dtype(np.float32)
    assert relu.buffer("idx", (3,), np.int32).dtype == np.int32  # MaxPool2D's argmax offsets
    assert relu.buffer("f", (3,)).dtype == np.float32
