"""Winograd F(4x4, 3x3) for 3x3 stride-1 convolutions in NHWC: forward and both gradients.

The same method as nn/winograd.py's F(2x2, 3x3) (read that first) on bigger tiles: each 4x4
output tile comes from a 6x6 input tile,

    V = B^T d B (6x6 per channel),   U = G g G^T (3x3 -> 6x6),   M = sum_c U * V,   Y = A^T M A

so 36 GEMMs (tiles x C) @ (C x F) give 16 outputs per tile: 2.25 multiplies per output and
(channel, filter) instead of F(2x2)'s 4 and the direct form's 9.

The matrices are Toom-Cook's for the interpolation points 0, 1, -1, 1/2, -1/2 and infinity
(with 1/2 in place of Lavin & Gray's 2: the same accuracy, the powers of two exact).
For correlation (the transpose of polynomial multiplication): with E_k the 6 x k matrix that
evaluates a polynomial of k coefficients at the points (row [p^0 .. p^(k-1)], at infinity
[0 .. 0 1]), A^T = E_4^T, G = D^-1 E_3 and B^T = D (E_6^-1)^T, D diagonal, chosen to make B^T
integral (tests/nn/test_winograd4.py derives them again in exact fractions):

    B^T = [[1,  0, -5,  0,  4, 0],     G = [[  1,    0,   0], A^T = [[1, 1,  1,   1,    1, 0],
           [0, -1, -1,  4,  4, 0],          [1/6,  1/6, 1/6],        [0, 1, -1, 1/2, -1/2, 0],
           [0,  1, -1, -4,  4, 0],          [1/6, -1/6, 1/6],        [0, 1,  1, 1/4,  1/4, 0],
           [0,  1,  2, -1, -2, 0],          [4/3,  2/3, 1/3],        [0, 1, -1, 1/8, -1/8, 1]]
           [0, -1,  2,  1, -2, 0],          [4/3, -2/3, 1/3],
           [0,  1,  0, -5,  0, 4]]          [  0,    0, 1/4]]

The backward pass is the exact adjoint, as in F(2x2): dM = A dY A^T, dU = V^T dM (summed over
tiles), dW = G^T dU G, dV = dM U^T, dx = B dV B^T scattered onto the overlapping input tiles.

Tiles: t = (n * th + i) * tw + j with th = ceil(Ho / 4), tw = ceil(Wo / 4); tile (i, j) reads
input rows 4i - pad .. 4i - pad + 5 (zero outside x) and writes output rows 4i .. 4i + 3. An
output that is not a multiple of 4 has a last row (column) of tiles that reaches past it: those
outputs are computed and dropped, and their d(out) is taken as zero (so the gradients are exact).
Arrays are (36, rows, channels), entry 6a + b the transformed tile's (a, b); rows >= tiles
(an odd number: winograd.padded_tiles). The kernels keep the channel innermost, one array read
and one written per loop (see winograd.output_transform), so the compiler vectorises them.
"""

import numpy as np

from distnn.nn.jit import njit

# G of the filter transform (6x3); B^T and A^T are written out in the kernels.
G = np.array([[1.0, 0.0, 0.0], [1 / 6, 1 / 6, 1 / 6], [1 / 6, -1 / 6, 1 / 6],
              [4 / 3, 2 / 3, 1 / 3], [4 / 3, -2 / 3, 1 / 3], [0.0, 0.0, 0.25]])
BT = np.array([[1, 0, -5, 0, 4, 0], [0, -1, -1, 4, 4, 0], [0, 1, -1, -4, 4, 0],
               [0, 1, 2, -1, -2, 0], [0, -1, 2, 1, -2, 0], [0, 1, 0, -5, 0, 4]], dtype=float)
AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 0.5, -0.5, 0], [0, 1, 1, 0.25, 0.25, 0],
               [0, 1, -1, 0.125, -0.125, 1]])


def tiles(size: int) -> int:
    """Tiles along an output side of `size` (the last one may reach past it)."""
    return (size + 3) // 4


def filter_transform(w, u, g, tmp):
    """u (36, C, F) = G w G^T for w (3, 3, C, F); g = G (6x3), tmp (6, 3, C*F) scratch, both
    in the dtype the product is formed in (u's or a wider one; u receives it rounded)."""
    cf = w.shape[2] * w.shape[3]
    np.matmul(g, w.reshape(3, 3 * cf), out=tmp.reshape(6, 3 * cf))
    np.matmul(g[None], tmp, out=u.reshape(6, 6, cf))


def filter_transform_adjoint(du, dw, gt, tmp):
    """dw (3, 3, C, F) = G^T du G for du (36, C, F); gt = G^T (3x6), tmp (3, 6, C*F)."""
    cf = dw.shape[2] * dw.shape[3]
    np.matmul(gt, du.reshape(6, 6 * cf), out=tmp.reshape(3, 6 * cf))
    np.matmul(gt[None], tmp, out=dw.reshape(3, 3, cf))


@njit
def _constants(dtype, a, b, c):
    """a, b, c in `dtype`: the kernels' constants, so that float32 tiles are transformed in
    float32 (a float64 literal would promote every product to float64)."""
    k = np.empty(3, dtype=dtype)
    k[0], k[1], k[2] = a, b, c
    return k[0], k[1], k[2]


@njit
def _row(x, n, y, zero):
    """Input row y of image n (W, C), or `zero` (a row of zeros) outside x."""
    return x[n, y] if 0 <= y < x.shape[1] else zero


@njit
def input_transform(x, v, pad, th, tw):
    """x (N, H, W, C) -> v (36, N*th*tw, C): B^T d B of every 6x6 input tile (zero padding
    outside x). Tile (i, j) starts at input row 4i - pad, column 4j - pad. Neighbouring tiles
    share two input columns, so the first half, B^T d (along the tile's rows), is formed once
    per input column of a row of tiles (into r), and the second, (B^T d) B, per tile: 1.5x
    fewer row transforms and no copy of each tile (the same operations on each value as tile
    by tile, so the same bits)."""
    n_, h, w, c = x.shape
    cols = 4 * tw + 2  # input columns a row of tiles covers, from -pad
    r = np.zeros((6, cols, c), dtype=x.dtype)  # B^T d; columns outside x stay zero
    zero = np.zeros((w, c), dtype=x.dtype)
    two, four, five = _constants(x.dtype, 2.0, 4.0, 5.0)
    first, stop = max(0, pad), min(cols, w + pad)  # the columns inside x
    for n in range(n_):
        for i in range(th):
            y0 = 4 * i - pad
            x0, x1, x2 = _row(x, n, y0, zero), _row(x, n, y0 + 1, zero), _row(x, n, y0 + 2, zero)
            x3, x4 = _row(x, n, y0 + 3, zero), _row(x, n, y0 + 4, zero)
            x5 = _row(x, n, y0 + 5, zero)
            for col in range(first, stop):
                xx = col - pad
                for ch in range(c):
                    d0, d1, d2 = x0[xx, ch], x1[xx, ch], x2[xx, ch]
                    d3, d4, d5 = x3[xx, ch], x4[xx, ch], x5[xx, ch]
                    p, q = four * d4 - d2, four * d3 - d1
                    rr, s = two * (d2 - d4), d1 - d3
                    r[0, col, ch] = d0 - five * d2 + four * d4
                    r[1, col, ch] = p + q
                    r[2, col, ch] = p - q
                    r[3, col, ch] = rr + s
                    r[4, col, ch] = rr - s
                    r[5, col, ch] = d1 - five * d3 + four * d5
            for j in range(tw):
                t = (n * th + i) * tw + j
                b0 = 4 * j
                for a in range(6):  # columns: (B^T d) B
                    for ch in range(c):
                        d0, d1, d2 = r[a, b0, ch], r[a, b0 + 1, ch], r[a, b0 + 2, ch]
                        d3, d4, d5 = r[a, b0 + 3, ch], r[a, b0 + 4, ch], r[a, b0 + 5, ch]
                        p, q = four * d4 - d2, four * d3 - d1
                        rr, s = two * (d2 - d4), d1 - d3
                        v[6 * a + 0, t, ch] = d0 - five * d2 + four * d4
                        v[6 * a + 1, t, ch] = p + q
                        v[6 * a + 2, t, ch] = p - q
                        v[6 * a + 3, t, ch] = rr + s
                        v[6 * a + 4, t, ch] = rr - s
                        v[6 * a + 5, t, ch] = d1 - five * d3 + four * d5


@njit
def output_transform(m, out, bias, relu, th, tw):
    """m (36, N*th*tw, F) -> out (N, Ho, Wo, F) = A^T M A + bias, then ReLU if `relu` (the
    parts of the last tiles past Ho or Wo are dropped). Two passes through tile buffers, each
    loop reading one array and writing another (see winograd.output_transform)."""
    n_, ho, wo, f = out.shape
    s = np.empty((4, 6, f), dtype=out.dtype)  # A^T M
    y = np.empty((16, f), dtype=out.dtype)  # (A^T M) A
    half, quarter, eighth = _constants(out.dtype, 0.5, 0.25, 0.125)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for b in range(6):  # rows: A^T M, column b
                    for k in range(f):
                        m0, m1, m2 = m[b, t, k], m[6 + b, t, k], m[12 + b, t, k]
                        m3, m4, m5 = m[18 + b, t, k], m[24 + b, t, k], m[30 + b, t, k]
                        p, q, r, e = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                        s[0, b, k] = m0 + p + r
                        s[1, b, k] = q + half * e
                        s[2, b, k] = p + quarter * r
                        s[3, b, k] = q + eighth * e + m5
                for a in range(4):  # columns: (A^T M) A
                    for k in range(f):
                        m0, m1, m2 = s[a, 0, k], s[a, 1, k], s[a, 2, k]
                        m3, m4, m5 = s[a, 3, k], s[a, 4, k], s[a, 5, k]
                        p, q, r, e = m1 + m2, m1 - m2, m3 + m4, m3 - m4
                        y[4 * a + 0, k] = m0 + p + r
                        y[4 * a + 1, k] = q + half * e
                        y[4 * a + 2, k] = p + quarter * r
                        y[4 * a + 3, k] = q + eighth * e + m5
                for a in range(4):
                    yy = 4 * i + a
                    if yy >= ho:
                        break
                    for b in range(4):
                        xx = 4 * j + b
                        if xx >= wo:
                            break
                        row = out[n, yy, xx]
                        for k in range(f):
                            val = y[4 * a + b, k] + bias[k]
                            if relu and val < 0.0:
                                val = 0.0
                            row[k] = val


@njit
def output_transform_adjoint(dout, dm, th, tw):
    """dout (N, Ho, Wo, F) -> dm (36, N*th*tw, F) = A dY A^T of every 4x4 tile dY (zero past
    Ho or Wo). Through tile buffers, as output_transform."""
    n_, ho, wo, f = dout.shape
    g = np.empty((4, 4, f), dtype=dout.dtype)
    s = np.empty((6, 4, f), dtype=dout.dtype)  # A dY
    half, quarter, eighth = _constants(dout.dtype, 0.5, 0.25, 0.125)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for a in range(4):
                    yy = 4 * i + a
                    for b in range(4):
                        xx = 4 * j + b
                        if yy < ho and xx < wo:
                            row = dout[n, yy, xx]
                            for k in range(f):
                                g[a, b, k] = row[k]
                        else:
                            for k in range(f):
                                g[a, b, k] = 0.0
                for b in range(4):  # rows: A dY, column b
                    for k in range(f):
                        y0, y1, y2, y3 = g[0, b, k], g[1, b, k], g[2, b, k], g[3, b, k]
                        p, q = y0 + y2, y1 + y3
                        r, e = y0 + quarter * y2, half * y1 + eighth * y3
                        s[0, b, k] = y0
                        s[1, b, k] = p + q
                        s[2, b, k] = p - q
                        s[3, b, k] = r + e
                        s[4, b, k] = r - e
                        s[5, b, k] = y3
                for a in range(6):  # columns: (A dY) A^T
                    for k in range(f):
                        y0, y1, y2, y3 = s[a, 0, k], s[a, 1, k], s[a, 2, k], s[a, 3, k]
                        p, q = y0 + y2, y1 + y3
                        r, e = y0 + quarter * y2, half * y1 + eighth * y3
                        dm[6 * a + 0, t, k] = y0
                        dm[6 * a + 1, t, k] = p + q
                        dm[6 * a + 2, t, k] = p - q
                        dm[6 * a + 3, t, k] = r + e
                        dm[6 * a + 4, t, k] = r - e
                        dm[6 * a + 5, t, k] = y3


@njit
def input_transform_adjoint(dv, dx, pad, th, tw):
    """dv (36, N*th*tw, C) -> dx (N, H, W, C) (zeroed here): B dV B^T of every tile, added onto
    the input positions the tile covers (tiles overlap by two rows and columns)."""
    n_, h, w, c = dx.shape
    dx[:] = 0.0
    d = np.empty((6, 6, c), dtype=dx.dtype)
    two, four, five = _constants(dx.dtype, 2.0, 4.0, 5.0)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for a in range(6):  # columns: dV B^T
                    for ch in range(c):
                        v0, v1, v2 = dv[6 * a, t, ch], dv[6 * a + 1, t, ch], dv[6 * a + 2, t, ch]
                        v3, v4 = dv[6 * a + 3, t, ch], dv[6 * a + 4, t, ch]
                        v5 = dv[6 * a + 5, t, ch]
                        p, q, r, e = v1 + v2, v2 - v1, v3 + v4, v3 - v4
                        d[a, 0, ch] = v0
                        d[a, 1, ch] = q + e + v5
                        d[a, 2, ch] = two * r - five * v0 - p
                        d[a, 3, ch] = -four * q - e - five * v5
                        d[a, 4, ch] = four * (v0 + p) - two * r
                        d[a, 5, ch] = four * v5
                for b in range(6):  # rows: B (dV B^T)
                    for ch in range(c):
                        v0, v1, v2 = d[0, b, ch], d[1, b, ch], d[2, b, ch]
                        v3, v4, v5 = d[3, b, ch], d[4, b, ch], d[5, b, ch]
                        p, q, r, e = v1 + v2, v2 - v1, v3 + v4, v3 - v4
                        d[0, b, ch] = v0
                        d[1, b, ch] = q + e + v5
                        d[2, b, ch] = two * r - five * v0 - p
                        d[3, b, ch] = -four * q - e - five * v5
                        d[4, b, ch] = four * (v0 + p) - two * r
                        d[5, b, ch] = four * v5
                for a in range(6):
                    y = 4 * i - pad + a
                    if y < 0 or y >= h:
                        continue
                    for b in range(6):
                        xx = 4 * j - pad + b
                        if 0 <= xx < w:
                            for ch in range(c):
                                dx[n, y, xx, ch] += d[a, b, ch]
