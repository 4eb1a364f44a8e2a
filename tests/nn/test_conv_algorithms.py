"""Conv2D's three formulations (Winograd F(2x2,3x3), the direct 3x3 kernel and im2col + GEMM)
compute the same forward pass and gradients, whole batch or chunk by chunk of images."""

import numpy as np
import pytest

from distnn.nn import Sequential, SpecError, conv, softmax_cross_entropy, threads, winograd

CASES = [  # (per-sample input shape, filters, pad, batch)
    ((8, 8, 3), 5, 1, 3),
    ((6, 10, 4), 2, 0, 2),
    ((10, 6, 2), 3, 2, 5),
    ((32, 32, 3), 16, 1, 2),
]


def run(in_shape, filters, pad, batch, dtype, algorithm):
    """Output and flat gradients of conv-relu-conv (the first conv computes no input gradient,
    the second one does) with every conv forced to `algorithm`."""
    spec = [dict(type="conv", filters=filters, kernel=3, pad=pad), dict(type="relu"),
            dict(type="conv", filters=filters, kernel=3, pad=pad)]
    model = Sequential(spec, in_shape, seed=1, dtype=dtype)
    convs = [layer for layer in model.layers if layer.kind == "conv"]
    for layer in convs:
        layer.algorithm = algorithm
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + in_shape).astype(dtype)
    out = model.forward(x, True).copy()
    model.backward(rng.standard_normal(out.shape).astype(dtype))
    return out, model.grads.copy()


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("in_shape,filters,pad,batch", CASES)
def test_winograd_equals_im2col(in_shape, filters, pad, batch, dtype, tol):
    out_w, grad_w = run(in_shape, filters, pad, batch, dtype, "winograd")
    out_i, grad_i = run(in_shape, filters, pad, batch, dtype, "im2col")
    assert np.abs(out_w - out_i).max() <= tol * np.abs(out_i).max()
    assert np.abs(grad_w - grad_i).max() <= tol * np.abs(grad_i).max()


# Every channel/filter parity (the direct kernel takes filters two at a time), each padding it
# takes, rectangular and odd-sized maps.
DIRECT_CASES = [  # (per-sample input shape, filters, pad, batch)
    ((7, 9, 10), 10, 1, 3),
    ((6, 5, 3), 7, 0, 2),
    ((5, 8, 4), 1, 2, 2),
    ((9, 6, 1), 2, 1, 4),
    ((32, 32, 3), 10, 1, 2),
]


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 2e-6)])
@pytest.mark.parametrize("in_shape,filters,pad,batch", DIRECT_CASES + CASES)
def test_direct_equals_im2col(in_shape, filters, pad, batch, dtype, tol):
    out_d, grad_d = run(in_shape, filters, pad, batch, dtype, "direct")
    out_i, grad_i = run(in_shape, filters, pad, batch, dtype, "im2col")
    assert np.abs(out_d - out_i).max() <= tol * np.abs(out_i).max()
    assert np.abs(grad_d - grad_i).max() <= tol * np.abs(grad_i).max()


def test_direct_reuses_dirty_buffers():
    """A second step on other data (the work buffers are reused, not cleared by the caller)
    gives what a fresh model gives."""
    first = run((6, 7, 3), 5, 1, 2, np.float64, "direct")
    spec = [dict(type="conv", filters=5, kernel=3, pad=1), dict(type="relu"),
            dict(type="conv", filters=5, kernel=3, pad=1)]
    model = Sequential(spec, (6, 7, 3), seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 7, 3))
    dout = rng.standard_normal((2, 6, 7, 5))  # the same draws as run()
    other = np.random.default_rng(9).standard_normal((2, 6, 7, 3))
    model.forward(10.0 * other, True)  # dirties every work buffer first
    model.backward(np.ones((2, 6, 7, 5)))
    out = model.forward(x, True).copy()
    model.backward(dout)
    assert [layer.algorithm for layer in model.layers if layer.kind == "conv"] == ["direct"] * 2
    np.testing.assert_array_equal(out, first[0])
    np.testing.assert_array_equal(model.grads, first[1])


@pytest.mark.parametrize("algorithm", ["winograd", "im2col", "direct"])
def test_thread_count_does_not_change_results(monkeypatch, algorithm):
    """Bit-identical outputs and gradients on 1, 2 and 3 threads: 20 images in one-image chunks
    make 16 groups of uneven size, so the threads share them unevenly."""
    monkeypatch.setattr(conv.Winograd, "CHUNK_TILES", 1)
    monkeypatch.setattr(conv.Im2col, "CHUNK_ROWS", 1)
    base = run((8, 8, 3), 4, 1, 20, np.float32, algorithm)
    for count in (2, 3):
        with threads.limit(count):
            got = run((8, 8, 3), 4, 1, 20, np.float32, algorithm)
        np.testing.assert_array_equal(got[0], base[0])
        np.testing.assert_array_equal(got[1], base[1])


@pytest.mark.parametrize("algorithm", ["winograd", "im2col"])
def test_chunking_does_not_change_results(monkeypatch, algorithm):
    whole = run((8, 8, 3), 4, 1, 5, np.float64, algorithm)
    monkeypatch.setattr(conv.Winograd, "CHUNK_TILES", 1)  # one image per chunk
    monkeypatch.setattr(conv.Im2col, "CHUNK_ROWS", 1)
    chunked = run((8, 8, 3), 4, 1, 5, np.float64, algorithm)
    np.testing.assert_allclose(chunked[0], whole[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(chunked[1], whole[1], rtol=1e-12, atol=1e-13)


def conv_layer(kernel, stride, pad, ho=8, wo=8, channels=3, filters=4):
    """A built Conv2D with this kernel, stride and padding and an output of ho x wo."""
    layer = conv.Conv2D(filters, kernel, stride, pad)
    size = [(o - 1) * stride + kernel - 2 * pad for o in (ho, wo)]
    layer.build((*size, channels))
    assert layer.out_shape[:2] == (ho, wo)
    return layer


def test_algorithms_fit():
    winograd_fits, direct_fits = conv.Winograd.fits, conv.Direct.fits
    assert winograd_fits(conv_layer(3, 1, 1))
    assert not winograd_fits(conv_layer(3, 1, 1, ho=7)) and not winograd_fits(conv_layer(3, 2, 1))
    assert not winograd_fits(conv_layer(5, 1, 2))
    assert direct_fits(conv_layer(3, 1, 0)) and direct_fits(conv_layer(3, 1, 2))
    assert not direct_fits(conv_layer(3, 1, 3)) and not direct_fits(conv_layer(3, 2, 1))
    assert not direct_fits(conv_layer(5, 1, 2))
    assert all(conv.Im2col.fits(conv_layer(k, s, p)) for k, s, p in ((3, 1, 3), (5, 2, 1)))


def test_forcing_an_algorithm_that_does_not_fit_is_refused():
    layer = conv_layer(3, 1, 1, ho=7)
    layer.algorithm = "direct"
    assert layer.algorithm == "direct"
    for name in ("winograd", "fft"):
        with pytest.raises(SpecError, match=r"conv: algorithm '\w+'.*7x8 output.*'direct'"):
            layer.algorithm = name
    assert layer.algorithm == "direct"


def test_algorithm_choice():
    assert conv.ALGORITHMS[-1] is conv.Im2col  # it fits every conv: the fallback
    model = Sequential([dict(type="conv", filters=32, kernel=3, pad=1),
                        dict(type="conv", filters=32, kernel=3, pad=1),
                        dict(type="conv", filters=32, kernel=2, stride=2)], (8, 8, 3), seed=0)
    # 3x3/1 with 32 filters on an 8x8 output (a multiple of 4): direct on 3 input channels,
    # Winograd F(4x4) on 32; 2x2/2: im2col
    assert [layer.algorithm for layer in model.layers] == ["direct", "winograd4", "im2col"]
    small = Sequential([dict(type="conv", filters=32, kernel=3, pad=1)], (4, 4, 32), seed=0)
    assert small.layers[0].algorithm == "winograd"  # a 4x4 output: F(2x2)
    seed = Sequential([dict(type="conv", filters=10, kernel=3, pad=1),
                       dict(type="conv", filters=10, kernel=3, pad=1),
                       dict(type="conv", filters=16, kernel=3, pad=1),  # 10 channels: thin
                       dict(type="conv", filters=32, kernel=3, pad=1),  # 32 filters: F(4x4)
                       dict(type="conv", filters=8, kernel=3, pad=3),  # padding 3: im2col
                       dict(type="conv", filters=8, kernel=5, pad=2)], (8, 8, 3), seed=0)
    assert [layer.algorithm for layer in seed.layers] == \
        ["direct"] * 3 + ["winograd4"] + ["im2col"] * 2


def test_padded_tiles_is_odd_and_large_enough():
    for tiles in (1, 2, 16, 255, 256, 1024):
        rows = winograd.padded_tiles(tiles)
        assert rows >= tiles and rows % 2 == 1 and rows - tiles <= 1


def test_first_layer_input_may_change_after_forward():
    """The first conv keeps its own copy of the images: a caller reusing the input array (a
    prefetching loader) between forward and backward cannot change the gradients."""
    spec = [dict(type="conv", filters=4, kernel=3, pad=1), dict(type="flatten"),
            dict(type="dense", units=3)]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 6, 6, 2))
    y = np.array([0, 2])
    grads = []
    for clobber in (False, True):
        model = Sequential(spec, (6, 6, 2), seed=4, dtype=np.float64)
        xx = x.copy()
        scores = model.forward(xx, True)
        if clobber:
            xx[...] = 0.0
        _, dscores = softmax_cross_entropy(scores, y)
        model.backward(dscores)
        grads.append(model.grads.copy())
    np.testing.assert_array_equal(grads[0], grads[1])


@pytest.mark.parametrize("algorithm", ["winograd", "im2col", "direct"])
def test_non_contiguous_input(algorithm):
    """An NCHW array transposed to NHWC (a view, not C-contiguous) is a valid input."""
    spec = [dict(type="conv", filters=4, kernel=3, pad=1), dict(type="relu"),
            dict(type="flatten"), dict(type="dense", units=3)]
    x = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).transpose(0, 2, 3, 1)
    results = []
    for data in (x, np.ascontiguousarray(x)):
        model = Sequential(spec, (6, 6, 2), seed=0, dtype=np.float64)
        model.layers[0].algorithm = algorithm
        out = model.forward(data, True).copy()
        model.backward(np.ones_like(out))
        results.append((out, model.grads.copy()))
    np.testing.assert_array_equal(results[0][0], results[1][0])
    np.testing.assert_array_equal(results[0][1], results[1][1])
