"""Direct 3x3 stride-1 convolution for thin layers (few channels or few filters), in NHWC.

With 10 channels and 10 filters, im2col + GEMM multiplies (rows x 90) by (90 x 10): a GEMM too
narrow for BLAS to reach speed, and an im2col that copies 9 values per input value. Winograd's
16 GEMMs are thinner still. Here each image is moved once into a zero-padded planar buffer
(one flat row of width wp = W + 2*pad per channel), and every output is computed in that layout
from nine shifted views of the same row:

    o[j, P] = sum over i, ky, kx of  w[i, ky, kx, j] * a[i, P + ky*wp + kx]     (P = y*wp + x)

The innermost loop runs over P, contiguous in every array it touches, so the compiler
vectorises it across output pixels; filters go two at a time, so each loaded input vector
feeds 18 multiply-adds.
Positions with x >= Wo are computed and dropped (2 of 34 columns for a 32-wide image, pad 1).

The same correlation gives the input gradient: d(out) goes into a planar buffer `dz` with
q = 2 - pad zero rows above and below (and zero columns between rows), and
dx = correlate(dz, the filters flipped and transposed). The weight gradient is the matching
reduction over P:  dw[i, ky, kx, j] += sum over P of a[i, P + ky*wp + kx] * dz_view[j, P].

Every loop that vectorises reads one shifted view per tap. Indexing shifted views (never
`a[i, P + off]` with a run-time offset, which the compiler must assume could be negative and
wrap around) is what lets it vectorise at all (measured: 5x). The views are written out in
each kernel: built by a shared helper returning a tuple, the weight gradient ran 17 % slower.

distnn/nn/conv/direct.py drives these kernels and says which convs use them.
"""

from distnn.nn.jit import njit, njit_fastmath

# Multiply-adds may fuse (FMA). The weight gradient's sums may also be reassociated, which is
# what lets them run in vector lanes; the order is fixed by the compiled code, so results are
# still the same from run to run.
_fma = njit_fastmath("contract")
_sum = njit_fastmath("contract", "reassoc")


def buffer_shapes(batch, in_shape, filters, pad):
    """Shapes of the work buffers, all planar with rows of width wp: the padded images
    `planar`, the padded d(out) dz, the forward output o and the input gradient ox (each as its
    even and its odd rows: see `correlate`). `planar` and `dz` must start zeroed."""
    h, w, c = in_shape
    wp = w + 2 * pad
    ho = h + 2 * pad - 2
    return {"planar": (batch, c, (h + 2 * pad + 1) * wp), "dz": (filters, (h + 3) * wp),
            "o_even": ((filters + 1) // 2, ho * wp), "o_odd": (filters // 2, ho * wp),
            "ox_even": ((c + 1) // 2, h * wp), "ox_odd": (c // 2, h * wp)}


@_fma
def _correlate_one(ai, w, i, j, oj, wp, m):
    """oj[P] += sum_{ky, kx} w[i, ky, kx, j] * ai[P + ky*wp + kx] (the odd filter out)."""
    a00, a01, a02 = ai[0:], ai[1:], ai[2:]
    a10, a11, a12 = ai[wp:], ai[wp + 1:], ai[wp + 2:]
    a20, a21, a22 = ai[2 * wp:], ai[2 * wp + 1:], ai[2 * wp + 2:]
    w00, w01, w02 = w[i, 0, 0, j], w[i, 0, 1, j], w[i, 0, 2, j]
    w10, w11, w12 = w[i, 1, 0, j], w[i, 1, 1, j], w[i, 1, 2, j]
    w20, w21, w22 = w[i, 2, 0, j], w[i, 2, 1, j], w[i, 2, 2, j]
    for p in range(m):
        oj[p] = (oj[p] + w00 * a00[p] + w01 * a01[p] + w02 * a02[p] + w10 * a10[p]
                 + w11 * a11[p] + w12 * a12[p] + w20 * a20[p] + w21 * a21[p] + w22 * a22[p])


@_fma
def correlate(a, w, even, odd, wp, m):
    """o[j, P] = sum_{i, ky, kx} w[i, ky, kx, j] * a[i, P + ky*wp + kx] for P < m (3x3 taps),
    with the even rows of o (j = 0, 2, ...) in `even` and the odd ones in `odd`.
    a (I, >= m + 2*wp + 2), w (I, 3, 3, J), even (ceil(J/2), >= m), odd (J//2, >= m).
    Filters go two at a time, one into each array, so that each loaded input vector feeds 18
    multiply-adds; the two rows written must be rows of two different arrays (with rows of one
    array the compiler cannot tell they do not overlap, and does not vectorise: 1.4x slower,
    measured; the pair loop written out here, not in a called function, runs 1.4x faster
    again)."""
    jn = w.shape[3]
    even[:, :m] = 0.0
    odd[:, :m] = 0.0
    for i in range(a.shape[0]):
        ai = a[i]
        a00, a01, a02 = ai[0:], ai[1:], ai[2:]
        a10, a11, a12 = ai[wp:], ai[wp + 1:], ai[wp + 2:]
        a20, a21, a22 = ai[2 * wp:], ai[2 * wp + 1:], ai[2 * wp + 2:]
        for jj in range(jn // 2):
            j = 2 * jj
            oj, ok = even[jj], odd[jj]
            w00, w01, w02 = w[i, 0, 0, j], w[i, 0, 1, j], w[i, 0, 2, j]
            w10, w11, w12 = w[i, 1, 0, j], w[i, 1, 1, j], w[i, 1, 2, j]
            w20, w21, w22 = w[i, 2, 0, j], w[i, 2, 1, j], w[i, 2, 2, j]
            v00, v01, v02 = w[i, 0, 0, j + 1], w[i, 0, 1, j + 1], w[i, 0, 2, j + 1]
            v10, v11, v12 = w[i, 1, 0, j + 1], w[i, 1, 1, j + 1], w[i, 1, 2, j + 1]
            v20, v21, v22 = w[i, 2, 0, j + 1], w[i, 2, 1, j + 1], w[i, 2, 2, j + 1]
            for p in range(m):
                x00, x01, x02 = a00[p], a01[p], a02[p]
                x10, x11, x12 = a10[p], a11[p], a12[p]
                x20, x21, x22 = a20[p], a21[p], a22[p]
                oj[p] = (oj[p] + w00 * x00 + w01 * x01 + w02 * x02 + w10 * x10 + w11 * x11
                         + w12 * x12 + w20 * x20 + w21 * x21 + w22 * x22)
                ok[p] = (ok[p] + v00 * x00 + v01 * x01 + v02 * x02 + v10 * x10 + v11 * x11
                         + v12 * x12 + v20 * x20 + v21 * x21 + v22 * x22)
        if jn % 2:
            _correlate_one(ai, w, i, jn - 1, even[jn // 2], wp, m)


@_sum
def _grad_pair(ai, dj, dk, dw, i, j, wp, m):
    """dw[i, ky, kx, j] += sum_P ai[P + ky*wp + kx] * dj[P], and dw[..., j + 1] with dk."""
    a00, a01, a02 = ai[0:], ai[1:], ai[2:]
    a10, a11, a12 = ai[wp:], ai[wp + 1:], ai[wp + 2:]
    a20, a21, a22 = ai[2 * wp:], ai[2 * wp + 1:], ai[2 * wp + 2:]
    s00, s01, s02 = dw[i, 0, 0, j], dw[i, 0, 1, j], dw[i, 0, 2, j]
    s10, s11, s12 = dw[i, 1, 0, j], dw[i, 1, 1, j], dw[i, 1, 2, j]
    s20, s21, s22 = dw[i, 2, 0, j], dw[i, 2, 1, j], dw[i, 2, 2, j]
    t00, t01, t02 = dw[i, 0, 0, j + 1], dw[i, 0, 1, j + 1], dw[i, 0, 2, j + 1]
    t10, t11, t12 = dw[i, 1, 0, j + 1], dw[i, 1, 1, j + 1], dw[i, 1, 2, j + 1]
    t20, t21, t22 = dw[i, 2, 0, j + 1], dw[i, 2, 1, j + 1], dw[i, 2, 2, j + 1]
    for p in range(m):
        g, h = dj[p], dk[p]
        x00, x01, x02 = a00[p], a01[p], a02[p]
        x10, x11, x12 = a10[p], a11[p], a12[p]
        x20, x21, x22 = a20[p], a21[p], a22[p]
        s00 += x00 * g
        s01 += x01 * g
        s02 += x02 * g
        s10 += x10 * g
        s11 += x11 * g
        s12 += x12 * g
        s20 += x20 * g
        s21 += x21 * g
        s22 += x22 * g
        t00 += x00 * h
        t01 += x01 * h
        t02 += x02 * h
        t10 += x10 * h
        t11 += x11 * h
        t12 += x12 * h
        t20 += x20 * h
        t21 += x21 * h
        t22 += x22 * h
    dw[i, 0, 0, j], dw[i, 0, 1, j], dw[i, 0, 2, j] = s00, s01, s02
    dw[i, 1, 0, j], dw[i, 1, 1, j], dw[i, 1, 2, j] = s10, s11, s12
    dw[i, 2, 0, j], dw[i, 2, 1, j], dw[i, 2, 2, j] = s20, s21, s22
    dw[i, 0, 0, j + 1], dw[i, 0, 1, j + 1], dw[i, 0, 2, j + 1] = t00, t01, t02
    dw[i, 1, 0, j + 1], dw[i, 1, 1, j + 1], dw[i, 1, 2, j + 1] = t10, t11, t12
    dw[i, 2, 0, j + 1], dw[i, 2, 1, j + 1], dw[i, 2, 2, j + 1] = t20, t21, t22


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
    and that alone stops vectorisation.) Two filters at a time: each loaded input vector feeds
    18 multiply-adds (measured 1.6x faster than one)."""
    jn = d.shape[0]
    for i in range(a.shape[0]):
        ai = a[i]
        for jj in range(jn // 2):
            j = 2 * jj
            _grad_pair(ai, d[j, start:], d[j + 1, start:], dw, i, j, wp, m)
        if jn % 2:
            _grad_one(ai, d[jn - 1, start:], dw, i, jn - 1, wp, m)


# The layout moves below loop over channels outermost: contiguous planar rows on one side,
# a stride of C on the NHWC side (measured: 1.5-2.4x faster than channels innermost).


@njit
def _to_planar(x, a, start, wp):
    """a[c, start + y*wp + x] = x[y, x, c] for x (H, W, C); the rest of a is left as is."""
    h, w, c = x.shape
    flat = x.reshape(-1)
    for ch in range(c):
        for y in range(h):
            src = flat[y * w * c + ch:]
            dst = a[ch, start + y * wp:]
            for xx in range(w):
                dst[xx] = src[xx * c]


@njit
def _from_planar(even, odd, out, wp, b, relu):
    """out[y, x, k] = o[k, y*wp + x] (+ b[k], then ReLU if `relu`), out (Ho, Wo, F), o's even
    and odd rows in `even` and `odd`. b: None or (F,)."""
    ho, wo, f = out.shape
    flat = out.reshape(-1)
    for k in range(f):
        src = even[k // 2] if k % 2 == 0 else odd[k // 2]
        bk = 0.0 if b is None else b[k]
        for y in range(ho):
            row = src[y * wp:]
            dst = flat[y * wo * f + k:]
            for xx in range(wo):
                v = row[xx] + bk
                if relu and v < 0.0:
                    v = 0.0
                dst[xx * f] = v


@njit
def forward(x, wf, b, out, relu, pad, planar, o_even, o_odd):
    """out (N, Ho, Wo, F) = conv(x (N, H, W, C)) + b, then ReLU if `relu`. wf (C, 3, 3, F)
    holds the filters as wf[c, ky, kx, f] = W[ky, kx, c, f]. planar (N, C, La) receives the
    zero-padded planar images (kept for `backward`); its padding must be zero (it is never
    written here). o_even, o_odd: see buffer_shapes."""
    n_, h, w, c = x.shape
    _, ho, wo, f = out.shape
    wp = w + 2 * pad
    m = ho * wp
    for n in range(n_):
        a = planar[n]
        _to_planar(x[n], a, pad * wp + pad, wp)
        correlate(a, wf, o_even, o_odd, wp, m)
        _from_planar(o_even, o_odd, out[n], wp, b, relu)


@njit
def backward(planar, dout, out, relu, wb, dw, db, dx, want_dx, pad, dz, ox_even, ox_odd):
    """Gradients of `forward`: dw (C, 3, 3, F) (as dw[c, ky, kx, f] = dW[ky, kx, c, f]), db (F,)
    and, if `want_dx`, dx (N, H, W, C). planar: what `forward` left there; dout (N, Ho, Wo, F):
    d(loss)/d(out), masked here where the fused ReLU's output `out` is zero (if `relu`), in the
    same pass that moves it into dz (whose padding must be zero) and sums the bias gradient.
    wb (F, 3, 3, C): wb[f, ky, kx, c] = W[2-ky, 2-kx, c, f]."""
    n_, ho, wo, f = dout.shape
    _, h, w, c = dx.shape
    wp = w + 2 * pad
    q = 2 - pad  # the input gradient's padding
    m = ho * wp
    start = q + q * wp  # dz[f, start + y*wp + x] = dout[y, x, f]
    dw[:] = 0.0
    db[:] = 0.0
    for n in range(n_):
        dn, on = dout[n].reshape(-1), out[n].reshape(-1)
        for k in range(f):
            s = db[k]
            for y in range(ho):
                dst = dz[k, start + y * wp:]
                for xx in range(wo):
                    i = (y * wo + xx) * f + k
                    g = dn[i]
                    if relu and on[i] <= 0.0:
                        g = 0.0
                    s += g
                    dst[xx] = g
            db[k] = s
        a = planar[n]
        correlate_grad(a, dz, start, dw, wp, m)
        if want_dx:
            correlate(dz, wb, ox_even, ox_odd, wp, h * wp)
            _from_planar(ox_even, ox_odd, dx[n], wp, None, False)
