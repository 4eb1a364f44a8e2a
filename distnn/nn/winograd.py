"""Winograd F(2x2, 3x3) for 3x3 stride-1 convolutions in NHWC: forward and both gradients.

Each 2x2 output tile comes from a 4x4 input tile. With the transforms (Lavin & Gray's)

    V = B^T d B   (input tile d, 4x4 per channel)     U = G g G^T   (filter g, 3x3 -> 4x4)
    M = sum over channels of U * V (16 independent GEMMs: (tiles x C) @ (C x F))
    Y = A^T M A   (2x2 output tile)

a tile costs 16 multiplies per (channel, filter) instead of 36 for the direct form: 2.25x fewer
GEMM flops. The backward pass is the exact adjoint of these linear maps, again as 16 GEMMs:

    dM = A dY A^T,   dU = V^T dM (summed over tiles),   dW = G^T dU G,
    dV = dM U^T,     dx = B dV B^T scattered back onto the overlapping input tiles.

Tiles are laid out t = (n * th + i) * tw + j, arrays as (16, rows, channels) so that each of the
16 GEMMs reads and writes a contiguous matrix (rows >= tiles: see padded_tiles); the kernels
fill or read the first N*th*tw rows. The kernels below do the transforms (memory-bound
loops with the channel innermost, so the compiler vectorises them); conv/winograd.py drives them
chunk by chunk of images so that the transformed tiles stay in cache between a transform and its
GEMMs, and says which convs use them.
"""

import numpy as np

from distnn.nn.jit import njit

# G of the filter transform (4x3); B^T and A^T are written out in the kernels.
G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def padded_tiles(tiles: int) -> int:
    """Rows to allocate for `tiles` tiles in a (16, rows, width) buffer: an odd number. The
    kernels walk the 16 matrices side by side; with a power-of-two distance between them (the
    usual tile count) all 16 streams land in the same few cache sets and evict each other
    (measured: the dM transform 10x slower). An odd row count spreads them over the sets."""
    return tiles + 1 - tiles % 2


def filter_transform(w, u, g, tmp):
    """u (16, C, F) = G w G^T for w (3, 3, C, F); g = G in w's dtype, tmp (4, 3, C*F) scratch."""
    cf = w.shape[2] * w.shape[3]
    np.matmul(g, w.reshape(3, 3 * cf), out=tmp.reshape(4, 3 * cf))
    np.matmul(g[None], tmp, out=u.reshape(4, 4, cf))


def filter_transform_adjoint(du, dw, gt, tmp):
    """dw (3, 3, C, F) = G^T du G for du (16, C, F); gt = G^T in du's dtype, tmp (3, 4, C*F)."""
    cf = dw.shape[2] * dw.shape[3]
    np.matmul(gt, du.reshape(4, 4 * cf), out=tmp.reshape(3, 4 * cf))
    np.matmul(gt[None], tmp, out=dw.reshape(3, 3, cf))


@njit
def input_transform(x, v, pad, th, tw):
    """x (N, H, W, C) -> v (16, N*th*tw, C): B^T d B of every 4x4 input tile (zero padding
    outside x). Tile (i, j) starts at input row 2i - pad, column 2j - pad."""
    n_, h, w, c = x.shape
    d = np.empty((4, 4, c), dtype=x.dtype)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for a in range(4):
                    y = 2 * i - pad + a
                    for b in range(4):
                        xx = 2 * j - pad + b
                        if 0 <= y < h and 0 <= xx < w:
                            for ch in range(c):
                                d[a, b, ch] = x[n, y, xx, ch]
                        else:
                            for ch in range(c):
                                d[a, b, ch] = 0.0
                for b in range(4):  # rows: B^T d
                    for ch in range(c):
                        d0, d1, d2, d3 = d[0, b, ch], d[1, b, ch], d[2, b, ch], d[3, b, ch]
                        d[0, b, ch] = d0 - d2
                        d[1, b, ch] = d1 + d2
                        d[2, b, ch] = d2 - d1
                        d[3, b, ch] = d1 - d3
                for a in range(4):  # columns: (B^T d) B
                    for ch in range(c):
                        d0, d1, d2, d3 = d[a, 0, ch], d[a, 1, ch], d[a, 2, ch], d[a, 3, ch]
                        v[4 * a + 0, t, ch] = d0 - d2
                        v[4 * a + 1, t, ch] = d1 + d2
                        v[4 * a + 2, t, ch] = d2 - d1
                        v[4 * a + 3, t, ch] = d1 - d3


@njit
def output_transform(m, out, bias, relu, th, tw):
    """m (16, N*th*tw, F) -> out (N, 2*th, 2*tw, F) = A^T M A + bias, then ReLU if `relu`.

    Each loop reads one array and writes another (here through the tile buffer y): with more
    arrays in one loop the compiler gives up proving they do not overlap and stops
    vectorising (3x slower, measured)."""
    n_, _, _, f = out.shape
    y = np.empty((4, f), dtype=out.dtype)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for k in range(f):
                    # A^T M: two rows, for each of the 4 columns; then (A^T M) A
                    s00 = m[0, t, k] + m[4, t, k] + m[8, t, k]
                    s01 = m[1, t, k] + m[5, t, k] + m[9, t, k]
                    s02 = m[2, t, k] + m[6, t, k] + m[10, t, k]
                    s03 = m[3, t, k] + m[7, t, k] + m[11, t, k]
                    s10 = m[4, t, k] - m[8, t, k] - m[12, t, k]
                    s11 = m[5, t, k] - m[9, t, k] - m[13, t, k]
                    s12 = m[6, t, k] - m[10, t, k] - m[14, t, k]
                    s13 = m[7, t, k] - m[11, t, k] - m[15, t, k]
                    y[0, k] = s00 + s01 + s02
                    y[1, k] = s01 - s02 - s03
                    y[2, k] = s10 + s11 + s12
                    y[3, k] = s11 - s12 - s13
                for q in range(4):
                    row = out[n, 2 * i + q // 2, 2 * j + q % 2]
                    for k in range(f):
                        v = y[q, k] + bias[k]
                        if relu and v < 0.0:
                            v = 0.0
                        row[k] = v


@njit
def output_transform_adjoint(dout, dm, th, tw):
    """dout (N, 2*th, 2*tw, F) -> dm (16, N*th*tw, F) = A dY A^T of every 2x2 tile dY.
    (Through the tile buffer g: see output_transform.)"""
    n_, _, _, f = dout.shape
    g = np.empty((4, f), dtype=dout.dtype)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for q in range(4):
                    row = dout[n, 2 * i + q // 2, 2 * j + q % 2]
                    for k in range(f):
                        g[q, k] = row[k]
                for k in range(f):
                    g00, g01, g10, g11 = g[0, k], g[1, k], g[2, k], g[3, k]
                    # rows a of A dY: (g0., g0.+g1., g0.-g1., -g1.); then the same on columns
                    u0, w0 = g00, g01
                    u1, w1 = g00 + g10, g01 + g11
                    u2, w2 = g00 - g10, g01 - g11
                    u3, w3 = -g10, -g11
                    dm[0, t, k] = u0
                    dm[1, t, k] = u0 + w0
                    dm[2, t, k] = u0 - w0
                    dm[3, t, k] = -w0
                    dm[4, t, k] = u1
                    dm[5, t, k] = u1 + w1
                    dm[6, t, k] = u1 - w1
                    dm[7, t, k] = -w1
                    dm[8, t, k] = u2
                    dm[9, t, k] = u2 + w2
                    dm[10, t, k] = u2 - w2
                    dm[11, t, k] = -w2
                    dm[12, t, k] = u3
                    dm[13, t, k] = u3 + w3
                    dm[14, t, k] = u3 - w3
                    dm[15, t, k] = -w3


@njit
def input_transform_adjoint(dv, dx, pad, th, tw):
    """dv (16, N*th*tw, C) -> dx (N, H, W, C) (zeroed here): B dV B^T of every tile, added onto
    the input positions the tile covers (tiles overlap by two rows and columns)."""
    n_, h, w, c = dx.shape
    dx[:] = 0.0
    d = np.empty((4, 4, c), dtype=dx.dtype)
    for n in range(n_):
        for i in range(th):
            for j in range(tw):
                t = (n * th + i) * tw + j
                for a in range(4):  # columns: dV B^T, i.e. (v0, v1-v2+v3, -v0+v1+v2, -v3)
                    for ch in range(c):
                        v0, v1 = dv[4 * a, t, ch], dv[4 * a + 1, t, ch]
                        v2, v3 = dv[4 * a + 2, t, ch], dv[4 * a + 3, t, ch]
                        d[a, 0, ch] = v0
                        d[a, 1, ch] = v1 - v2 + v3
                        d[a, 2, ch] = v1 + v2 - v0
                        d[a, 3, ch] = -v3
                for b in range(4):  # rows: B (dV B^T)
                    for ch in range(c):
                        v0, v1, v2, v3 = d[0, b, ch], d[1, b, ch], d[2, b, ch], d[3, b, ch]
                        d[0, b, ch] = v0
                        d[1, b, ch] = v1 - v2 + v3
                        d[2, b, ch] = v1 + v2 - v0
                        d[3, b, ch] = -v3
                for a in range(4):
                    y = 2 * i - pad + a
                    if y < 0 or y >= h:
                        continue
                    for b in range(4):
                        xx = 2 * j - pad + b
                        if 0 <= xx < w:
                            for ch in range(c):
                                dx[n, y, xx, ch] += d[a, b, ch]
