"""Winograd F(4x4, 3x3) (nn/winograd4.py, nn/conv/winograd4.py): its matrices derived again from
the interpolation points, its forward pass and gradients against float64 direct correlation (to
round-off in float64, within a measured bound in float32), a gradient check, the layers that
pick it, and bit-identical results on 1 and 2 threads."""

from __future__ import annotations

from fractions import Fraction

import numba
import numpy as np
import pytest

from distnn.nn import Sequential, check_layer, conv, threads, winograd4
from tests.nn.helpers import built
from tests.nn.test_conv_values import conv_grad_ref, conv_ref
from tests.nn.test_jit_settings import SETTINGS

POINTS = [Fraction(0), Fraction(1), Fraction(-1), Fraction(1, 2), Fraction(-1, 2)]  # and inf


def evaluation(k: int) -> list[list[Fraction]]:
    """6 x k: a polynomial of k coefficients at the points, the last row at infinity (its
    leading coefficient)."""
    return [[p ** i for i in range(k)] for p in POINTS] + [[Fraction(0)] * (k - 1) + [Fraction(1)]]


def inverse(a: list[list[Fraction]]) -> list[list[Fraction]]:
    """Exact Gauss-Jordan inverse."""
    n = len(a)
    m = [row[:] + [Fraction(int(i == j)) for j in range(n)] for i, row in enumerate(a)]
    for col in range(n):
        piv = next(r for r in range(col, n) if m[r][col] != 0)
        m[col], m[piv] = m[piv], m[col]
        m[col] = [v / m[col][col] for v in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                m[r] = [v - m[r][col] * w for v, w in zip(m[r], m[col], strict=True)]
    return [row[n:] for row in m]


def toom_cook() -> tuple[list[list[Fraction]], list[list[Fraction]], list[list[Fraction]]]:
    """(B^T, G, A^T) of F(4, 3) for the points: correlation is the transpose of polynomial
    multiplication s = E_6^-1 ((E_3 g) * (E_4 h)), so y = E_4^T ((E_3 g) * (E_6^-T d)); each row
    j of B^T = E_6^-T is scaled to the smallest integers, and row j of G = E_3 by the inverse."""
    bt = [list(r) for r in zip(*inverse(evaluation(6)), strict=True)]  # E_6^-T
    e3 = evaluation(3)
    for j, row in enumerate(bt):
        den = np.lcm.reduce([v.denominator for v in row])
        num = np.gcd.reduce([(v * den).numerator for v in row])
        scale = Fraction(int(den), int(num))
        bt[j] = [v * scale for v in row]
        e3[j] = [v / scale for v in e3[j]]
    at = [list(r) for r in zip(*evaluation(4), strict=True)]
    return bt, e3, at


def test_matrices_are_toom_cooks_for_the_points():
    bt, g, at = toom_cook()
    for mine, derived in ((winograd4.BT, bt), (winograd4.G, g), (winograd4.AT, at)):
        np.testing.assert_allclose(mine, np.array(derived, dtype=float), rtol=1e-16, atol=0)
    # exactly, in fractions: A^T ((G g) * (B^T d)) is the correlation of d (6) with g (3)
    for k in range(3):
        for lo in range(6):
            y = [sum(at[i][j] * g[j][k] * bt[j][lo] for j in range(6)) for i in range(4)]
            assert y == [Fraction(int(lo - i == k)) for i in range(4)]


def test_2d_transforms_equal_direct_correlation_in_float64():
    rng = np.random.default_rng(0)
    bt, g, at = winograd4.BT, winograd4.G, winograd4.AT
    for _ in range(5):
        d, w = rng.standard_normal((6, 6)), rng.standard_normal((3, 3))
        y = at @ ((g @ w @ g.T) * (bt @ d @ bt.T)) @ at.T
        ref = np.array([[np.sum(d[i:i + 3, j:j + 3] * w) for j in range(4)] for i in range(4)])
        np.testing.assert_allclose(y, ref, rtol=0, atol=1e-13 * np.abs(ref).max())


def layer_run(in_shape, filters, pad, batch, dtype, algorithm, relu=False, seed=0):
    """A conv (computing its input gradient) forced to `algorithm`, He-initialised, with random
    N(0, 1) input and d(out) and a random bias: (x, W, b, dout as float64; out, dW, db, dx)."""
    specs = [dict(type="conv", filters=filters, kernel=3, pad=pad)] + \
        ([dict(type="relu")] if relu else [])
    model = Sequential([dict(type="dropout", rate=0.0)] + specs, in_shape, seed=seed,
                       dtype=dtype)
    layer = model.layers[1]
    layer.algorithm = algorithm
    rng = np.random.default_rng(seed)
    layer.p["b"][...] = rng.standard_normal(filters)
    x = rng.standard_normal((batch,) + in_shape).astype(dtype)
    out = layer.forward(x, True).copy()
    dout = rng.standard_normal(out.shape).astype(dtype)
    dx = layer.backward(dout.copy()).copy()
    as64 = [np.asarray(a, np.float64) for a in (x, layer.p["W"], layer.p["b"], dout)]
    return as64, (out, layer.g["W"].copy(), layer.g["b"].copy(), dx)


def errors(in_shape, filters, pad, batch, dtype, algorithm, relu=False):
    """Max |got - want| / max |want| of out, dW and dx against float64 direct correlation (on
    the same, already rounded, inputs)."""
    (x, w, b, dout), (out, dw, _, dx) = layer_run(in_shape, filters, pad, batch, dtype,
                                                   algorithm, relu)
    ref = conv_ref(x, w, b, 1, pad)
    if relu:
        dout = dout * (ref > 0)
        ref = np.maximum(ref, 0.0)
    dw_ref, _, dx_ref = conv_grad_ref(x, w, dout, 1, pad)
    return [float(np.abs(got - want).max() / np.abs(want).max())
            for got, want in ((out, ref), (dw, dw_ref), (dx, dx_ref))]


# Every padding it takes, multiples of 4 and ragged outputs (the last tiles reach past the
# output), rectangular maps, one tile per image and fewer.
SHAPES = [  # (per-sample input shape, filters, pad, batch)
    ((8, 8, 3), 4, 1, 2),
    ((6, 10, 2), 3, 0, 2),
    ((9, 7, 2), 3, 1, 3),
    ((5, 5, 1), 2, 2, 2),
    ((6, 6, 1), 2, 3, 2),
    ((2, 3, 2), 2, 1, 2),
    ((12, 8, 16), 16, 1, 2),
]


@pytest.mark.parametrize("relu", [False, True], ids=["linear", "relu"])
@pytest.mark.parametrize("in_shape,filters,pad,batch", SHAPES)
def test_float64_equals_direct_correlation(in_shape, filters, pad, batch, relu):
    assert max(errors(in_shape, filters, pad, batch, np.float64, "winograd4", relu)) < 1e-10


# float32, N(0, 1) inputs and He weights: max relative errors of (out, dW, dx) measured
#                      F(4x4)                       F(2x2)
#   16->16 at 8x8     2.8e-6  2.7e-6  2.0e-6       1.9e-7  5.1e-7  2.0e-7
#   32->32 at 16x16   3.9e-6  6.4e-6  2.2e-6       1.9e-7  6.8e-7  2.3e-7
#   64->64 at 32x32   6.3e-6  5.7e-6  3.9e-6       2.8e-7  7.1e-7  2.8e-7
# (im2col: 1.5e-7 to 5.7e-7). F(4x4)'s transforms have entries up to 5 and G's thirds and
# sixths: 9-23x F(2x2)'s error. The bound: 2e-5 (3x the largest measured), and 40x F(2x2)'s
# error on the same data.
F32_BOUND, F32_RATIO = 2e-5, 40.0


@pytest.mark.parametrize("in_shape,filters,batch", [((8, 8, 16), 16, 8), ((16, 16, 32), 32, 4),
                                                    ((32, 32, 64), 64, 2)])
def test_float32_error_bound(in_shape, filters, batch):
    f4 = errors(in_shape, filters, 1, batch, np.float32, "winograd4")
    f2 = errors(in_shape, filters, 1, batch, np.float32, "winograd")
    for mine, theirs in zip(f4, f2, strict=True):
        assert mine < F32_BOUND and mine < F32_RATIO * theirs, (f4, f2)


@pytest.mark.parametrize("in_shape,pad", [((6, 6, 2), 1), ((5, 7, 3), 0)])
def test_gradient_check(in_shape, pad):
    layer = built(dict(type="conv", filters=3, kernel=3, stride=1, pad=pad), in_shape)
    layer.algorithm = "winograd4"
    errs = check_layer(layer, np.random.default_rng(1).standard_normal((2,) + in_shape))
    assert max(errs.values()) < 1e-6, errs


def test_fits_3x3_stride_1_only():
    def layer(kernel, stride, pad, size=8):
        lay = conv.Conv2D(4, kernel, stride, pad)
        lay.build((size, size, 3))
        return lay

    assert conv.Winograd4.fits(layer(3, 1, 1)) and conv.Winograd4.fits(layer(3, 1, 3, size=7))
    assert not conv.Winograd4.fits(layer(3, 2, 1, size=9))
    assert not conv.Winograd4.fits(layer(5, 1, 2))


@pytest.mark.parametrize("in_shape,filters,expected", [
    ((32, 32, 32), 32, "winograd4"),  # 32x32 maps
    ((16, 16, 32), 64, "winograd4"),
    ((8, 8, 64), 64, "winograd4"),  # 8x8: still F(4x4)
    ((12, 8, 16), 16, "winograd4"),  # multiples of 4
    ((4, 4, 64), 64, "winograd"),  # 4x4 (one tile): F(2x2)
    ((6, 6, 32), 32, "winograd"),  # not a multiple of 4: F(2x2)
    ((14, 14, 32), 32, "winograd"),
    ((32, 32, 8), 32, "winograd4"),  # thin input (8 channels), 32 filters
    ((32, 32, 3), 32, "direct"),  # an image's channels (a first layer): direct
    ((28, 28, 1), 32, "direct"),
    ((32, 32, 7), 64, "direct"),
    ((32, 32, 3), 16, "direct"),  # thin input and filters
    ((32, 32, 10), 10, "direct"),
    ((7, 7, 32), 32, "im2col"),  # odd: neither Winograd pays
])
def test_algorithm_choice(in_shape, filters, expected):
    model = Sequential([dict(type="conv", filters=filters, kernel=3, pad=1)], in_shape)
    assert model.layers[0].algorithm == expected
    assert conv.ALGORITHMS.index(conv.Winograd4) < conv.ALGORITHMS.index(conv.Winograd)


def test_thread_count_does_not_change_results(monkeypatch):
    """Bit-identical on 1 and 2 threads: 20 images in one-image chunks make 16 groups of
    uneven size (a ragged 6x6 output: 4 tiles per image)."""
    monkeypatch.setattr(conv.Winograd4, "CHUNK_TILES", 1)
    base = layer_run((6, 6, 3), 4, 1, 20, np.float32, "winograd4", relu=True)[1]
    with threads.limit(2):
        got = layer_run((6, 6, 3), 4, 1, 20, np.float32, "winograd4", relu=True)[1]
    for a, b in zip(got, base, strict=True):
        np.testing.assert_array_equal(a, b)


def test_chunking_does_not_change_results(monkeypatch):
    whole = layer_run((8, 8, 3), 4, 1, 5, np.float64, "winograd4")[1]
    monkeypatch.setattr(conv.Winograd4, "CHUNK_TILES", 1)  # one image per chunk
    chunked = layer_run((8, 8, 3), 4, 1, 5, np.float64, "winograd4")[1]
    for a, b in zip(chunked, whole, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


def test_steady_state_reuses_its_buffers():
    """A second step of the same shape allocates no new work buffer."""
    model = Sequential([dict(type="dropout", rate=0.0), dict(type="conv", filters=16, pad=1)],
                       (8, 8, 16), dtype=np.float32)
    layer = model.layers[1]
    assert layer.algorithm == "winograd4"
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 16)).astype(np.float32)
    layer.backward(layer.forward(x, True).copy())
    before = {k: id(v) for k, v in layer._scratch.items()}
    layer.backward(layer.forward(x, True).copy())
    assert {k: id(v) for k, v in layer._scratch.items()} == before


def test_kernels_have_distnn_jit_settings():
    """Built with nn/jit.py's njit, as nn/winograd.py's (tests/nn/test_jit_settings.py)."""
    kernels = [obj for obj in vars(winograd4).values()
               if isinstance(obj, numba.core.dispatcher.Dispatcher)]
    assert len(kernels) == 6  # _constants, _row and the four transforms
    for fn in kernels:
        assert fn.targetoptions == {**SETTINGS, "fastmath": False}


def bt_rows(d0, d1, d2, d3, d4, d5):
    """B^T applied to six float32 arrays, operation for operation as the kernels write it."""
    two, four, five = np.float32(2), np.float32(4), np.float32(5)
    p, q = four * d4 - d2, four * d3 - d1
    r, s = two * (d2 - d4), d1 - d3
    return [d0 - five * d2 + four * d4, p + q, p - q, r + s, r - s, d1 - five * d3 + four * d5]


@pytest.mark.parametrize("hw,pad", [((10, 14), 1), ((7, 9), 0), ((5, 6), 3)])
def test_input_transform_is_b_t_d_b_tile_by_tile_to_the_bit(hw, pad):
    """The kernel forms B^T d once per input column of a row of tiles and shares it between
    neighbouring tiles: the same float32 operations on each value as a tile-by-tile B^T d B
    in NumPy, so the same bits (padding and the ragged last tiles included)."""
    rng = np.random.default_rng(5)
    n, c = 2, 5
    x = rng.standard_normal((n,) + hw + (c,)).astype(np.float32)
    th, tw = winograd4.tiles(hw[0] + 2 * pad - 2), winograd4.tiles(hw[1] + 2 * pad - 2)
    padded = np.zeros((n, 4 * th + 2, 4 * tw + 2, c), np.float32)
    inside = padded[:, pad:pad + hw[0], pad:pad + hw[1]]
    inside[...] = x[:, :inside.shape[1], :inside.shape[2]]
    v = np.full((36, n * th * tw + 1, c), np.nan, np.float32)
    winograd4.input_transform(x, v, pad, th, tw)
    for b in range(n):
        for i in range(th):
            for j in range(tw):
                d = padded[b, 4 * i:4 * i + 6, 4 * j:4 * j + 6]  # (6, 6, C)
                rows = bt_rows(*d)  # B^T d: six (6, C) rows
                want = [bt_rows(*(row[k] for k in range(6))) for row in rows]  # (B^T d) B
                got = v[:, (b * th + i) * tw + j].reshape(6, 6, c)
                np.testing.assert_array_equal(got, np.array(want))
