"""The weight gradient of the direct 3x3 convolution (distnn/nn/direct.py, where the planar
layout is explained): dw[i, ky, kx, j] += sum over P of a[i, P + ky*wp + kx] * d[j, P], one row
of taps for four filters at a time so the running sums stay in vector registers."""


from distnn.nn.jit import njit, njit_fastmath

# Multiply-adds may fuse (FMA) and the sums be reassociated into vector lanes; the order is
# fixed by the compiled code, so results are the same from run to run (as in direct.py).
_sum = njit_fastmath("contract", "reassoc")


@_sum
def _grad_row4(ai, d0, d1, d2, d3, dw, i, ky, j, wp, m):
    """dw[i, ky, kx, j + t] += sum_P ai[P + ky*wp + kx] * dt[P] for kx < 3, t < 4: one row of
    taps for four filters, 12 sums (they stay in vector registers; the 18 of two filters' nine
    taps did not, and spilled: measured 2x slower, the same bits)."""
    a0, a1, a2 = ai[ky * wp:], ai[ky * wp + 1:], ai[ky * wp + 2:]
    s00, s01, s02 = dw[i, ky, 0, j], dw[i, ky, 1, j], dw[i, ky, 2, j]
    s10, s11, s12 = dw[i, ky, 0, j + 1], dw[i, ky, 1, j + 1], dw[i, ky, 2, j + 1]
    s20, s21, s22 = dw[i, ky, 0, j + 2], dw[i, ky, 1, j + 2], dw[i, ky, 2, j + 2]
    s30, s31, s32 = dw[i, ky, 0, j + 3], dw[i, ky, 1, j + 3], dw[i, ky, 2, j + 3]
    for p in range(m):
        x0, x1, x2 = a0[p], a1[p], a2[p]
        g0, g1, g2, g3 = d0[p], d1[p], d2[p], d3[p]
        s00 += x0 * g0
        s01 += x1 * g0
        s02 += x2 * g0
        s10 += x0 * g1
        s11 += x1 * g1
        s12 += x2 * g1
        s20 += x0 * g2
        s21 += x1 * g2
        s22 += x2 * g2
        s30 += x0 * g3
        s31 += x1 * g3
        s32 += x2 * g3
    dw[i, ky, 0, j], dw[i, ky, 1, j], dw[i, ky, 2, j] = s00, s01, s02
    dw[i, ky, 0, j + 1], dw[i, ky, 1, j + 1], dw[i, ky, 2, j + 1] = s10, s11, s12
    dw[i, ky, 0, j + 2], dw[i, ky, 1, j + 2], dw[i, ky, 2, j + 2] = s20, s21, s22
    dw[i, ky, 0, j + 3], dw[i, ky, 1, j + 3], dw[i, ky, 2, j + 3] = s30, s31, s32


@_sum
def _grad_row2(ai, d0, d1, dw, i, ky, j, wp, m):
    """_grad_row4 for two filters."""
    a0, a1, a2 = ai[ky * wp:], ai[ky * wp + 1:], ai[ky * wp + 2:]
    s00, s01, s02 = dw[i, ky, 0, j], dw[i, ky, 1, j], dw[i, ky, 2, j]
    s10, s11, s12 = dw[i, ky, 0, j + 1], dw[i, ky, 1, j + 1], dw[i, ky, 2, j + 1]
    for p in range(m):
        x0, x1, x2 = a0[p], a1[p], a2[p]
        g0, g1 = d0[p], d1[p]
        s00 += x0 * g0
        s01 += x1 * g0
        s02 += x2 * g0
        s10 += x0 * g1
        s11 += x1 * g1
        s12 += x2 * g1
    dw[i, ky, 0, j], dw[i, ky, 1, j], dw[i, ky, 2, j] = s00, s01, s02
    dw[i, ky, 0, j + 1], dw[i, ky, 1, j + 1], dw[i, ky, 2, j + 1] = s10, s11, s12


@_sum
def _grad_one(ai, dj, dw, i, j, wp, m):
    """dw[i, ky, kx, j] += sum_P ai[P + ky*wp + kx] * dj[P] (the odd filter out)."""
    a00, a01, a02 = ai[0:], ai[1:], ai[2:]
    a10, a11, a12 = ai[wp:], ai[wp + 1:], ai[wp + 2:]
    a20, a21, a22 = ai[2 * wp:], ai[2 * wp + 1:], ai[2 * wp + 2:]
    s00, s01, s02 = dw[i, 0, 0, j], dw[i, 0, 1, j], dw[i, 0, 2, j]
    s10, s11, s12 = dw[i, 1, 0, j], dw[i, 1, 1, j], dw[i, 1, 2, j]
    s20, s21, s22 = dw[i, 2, 0, j], dw[i, 2, 1, j], dw[i, 2, 2, j]
    for p in range(m):
        g = dj[p]
        s00 += a00[p] * g
        s01 += a01[p] * g
        s02 += a02[p] * g
        s10 += a10[p] * g
        s11 += a11[p] * g
        s12 += a12[p] * g
        s20 += a20[p] * g
        s21 += a21[p] * g
        s22 += a22[p] * g
    dw[i, 0, 0, j], dw[i, 0, 1, j], dw[i, 0, 2, j] = s00, s01, s02
    dw[i, 1, 0, j], dw[i, 1, 1, j], dw[i, 1, 2, j] = s10, s11, s12
    dw[i, 2, 0, j], dw[i, 2, 1, j], dw[i, 2, 2, j] = s20, s21, s22


@njit
def correlate_grad(a, d, start, dw, wp, m):
    """dw[i, ky, kx, j] += sum_{P < m} a[i, P + ky*wp + kx] * d[j, start + P] (the adjoint of
    `correlate` with respect to w). a (I, >= m + 2*wp + 2), d (J, >= start + m), dw (I, 3, 3, J).
    (`start` instead of a column-sliced d: rows of d[:, start:] are not known to be contiguous,
    and that alone stops vectorisation.) One row of taps for four filters at a time (then two,
    then one): each loaded input vector feeds 4 multiply-adds, each d(out) vector 3, and the
    12 sums stay in registers. An odd last filter goes alone, all nine taps at once. (Each sum
    is split into vector lanes just as in the pairs of filters of nine taps before: the same
    bits, measured.)"""
    jn = d.shape[0]
    for i in range(a.shape[0]):
        ai = a[i]
        for ky in range(3):
            j = 0
            while j + 4 <= jn:
                _grad_row4(ai, d[j, start:], d[j + 1, start:], d[j + 2, start:],
                           d[j + 3, start:], dw, i, ky, j, wp, m)
                j += 4
            if j + 2 <= jn:
                _grad_row2(ai, d[j, start:], d[j + 1, start:], dw, i, ky, j, wp, m)
        if jn % 2:
            _grad_one(ai, d[jn - 1, start:], dw, i, jn - 1, wp, m)
