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

import numpy as np

from distnn.nn.direct_grad import correlate_grad
from distnn.nn.jit import njit, njit_fastmath

# Multiply-adds may fuse (FMA). (The weight gradient, direct_grad.py, may also reassociate its
# sums into vector lanes.)
_fma = njit_fastmath("contract")


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
def _hand_on(even, odd, nxt, start, wp, wo, m, b, relu):
    """nxt[k, start + P] = o[k, P] + b[k] (then ReLU if `relu`) for P < m, and 0 where
    P % wp >= wo (the columns computed and dropped, which land on the zero padding of the next
    layer's planar rows): the next direct conv's input, as its `_to_planar` would write it."""
    f = nxt.shape[0]
    zero = nxt.dtype.type(0.0)
    for k in range(f):
        src = even[k // 2] if k % 2 == 0 else odd[k // 2]
        bk = b[k]
        for p0 in range(0, m, wp):
            row, dst = src[p0:], nxt[k, start + p0:]
            for xx in range(wo):
                v = row[xx] + bk
                if relu:  # as in _from_planar: -0.0 and NaN pass
                    v = zero if v < zero else v
                dst[xx] = v
            for xx in range(wo, wp):
                dst[xx] = zero


@njit
def planar_to_nhwc(planar, start, wp, out):
    """out[n, y, x, k] = planar[n, k, start + y*wp + x]: an output that a direct conv handed on
    (see `forward`) but did not write, moved back from the next conv's planar input."""
    n_, ho, wo, f = out.shape
    for n in range(n_):
        flat = out[n].reshape(-1)
        for k in range(f):
            for y in range(ho):
                src = planar[n, k, start + y * wp:]
                dst = flat[y * wo * f + k:]
                for xx in range(wo):
                    dst[xx * f] = src[xx]


@njit
def _pool_from_planar(even, odd, wp, b, relu, pout, parg):
    """The 2x2/2 max pool of this conv's output (+ b, then ReLU if `relu`), from its planar
    rows (o's even and odd rows): pout (Ho/2, Wo/2, F) and the window positions parg, as
    kernels.maxpool_forward computes them from the NHWC output (the first maximum in raster
    order)."""
    ho2, wo2, f = pout.shape
    zero = pout.dtype.type(0.0)
    po, pa = pout.reshape(-1), parg.reshape(-1)
    for k in range(f):
        src = even[k // 2] if k % 2 == 0 else odd[k // 2]
        bk = b[k]
        for i in range(ho2):
            r0, r1 = src[2 * i * wp:], src[(2 * i + 1) * wp:]
            dst, arg = po[i * wo2 * f + k:], pa[i * wo2 * f + k:]
            for j in range(wo2):
                v0, v1 = r0[2 * j] + bk, r0[2 * j + 1] + bk
                v2, v3 = r1[2 * j] + bk, r1[2 * j + 1] + bk
                if relu:  # as in _from_planar: -0.0 and NaN pass
                    v0 = zero if v0 < zero else v0
                    v1 = zero if v1 < zero else v1
                    v2 = zero if v2 < zero else v2
                    v3 = zero if v3 < zero else v3
                k0 = np.int32(1) if v1 > v0 else np.int32(0)
                m0 = v1 if v1 > v0 else v0
                k1 = np.int32(3) if v3 > v2 else np.int32(2)
                m1 = v3 if v3 > v2 else v2
                dst[j * f] = m1 if m1 > m0 else m0
                arg[j * f] = k1 if m1 > m0 else k0


@njit
def forward(x, wf, b, out, relu, pad, planar, o_even, o_odd, fill, nxt, nxt_start, write_out,
            pout, parg):
    """out (N, Ho, Wo, F) = conv(x (N, H, W, C)) + b, then ReLU if `relu`. wf (C, 3, 3, F)
    holds the filters as wf[c, ky, kx, f] = W[ky, kx, c, f]. planar (N, C, La) receives the
    zero-padded planar images (kept for `backward`), unless not `fill` (it already holds
    them: the direct conv before handed them on); its padding must be zero (it is never
    written here). o_even, o_odd: see buffer_shapes. nxt (N, F, Lb) or empty: the next direct
    conv's planar input (rows of the same width, its data from nxt_start), written too; pout
    (N, Ho/2, Wo/2, F) and parg, or empty: the 2x2/2 max pool after it, computed here too;
    out only if `write_out`."""
    n_, h, w, c = x.shape
    _, ho, wo, f = out.shape
    wp = w + 2 * pad
    m = ho * wp
    for n in range(n_):
        a = planar[n]
        if fill:
            _to_planar(x[n], a, pad * wp + pad, wp)
        correlate(a, wf, o_even, o_odd, wp, m)
        if write_out:
            _from_planar(o_even, o_odd, out[n], wp, b, relu)
        if nxt.shape[0] > 0:
            _hand_on(o_even, o_odd, nxt[n], nxt_start, wp, wo, m, b, relu)
        if pout.shape[0] > 0:
            _pool_from_planar(o_even, o_odd, wp, b, relu, pout[n], parg[n])


@njit
def _mask_to_planar(dout, out, relu, db, acc, dz, start, wp):
    """dz[k, start + y*wp + x] = dout[y, x, k], zeroed where the fused ReLU's output `out` is
    <= 0 (if `relu`), and db[k] += the sum of what was written (in float64 in acc (F,), in the
    order of y then x, rounded once per image). The mask is a select, not a branch: with ReLU
    signs as random as a net's, a branch is mispredicted every other value (measured: 6x
    slower at 10 filters on 32x32). Row by row, all filters of a row (which stays in L1), then
    the next (measured 1.35x faster than filter by filter over the whole image)."""
    ho, wo, f = dout.shape
    zero = dout.dtype.type(0.0)
    dn, on = dout.reshape(-1), out.reshape(-1)
    for k in range(f):
        acc[k] = db[k]
    for y in range(ho):
        for k in range(f):
            dst = dz[k, start + y * wp:]
            src, msk = dn[y * wo * f + k:], on[y * wo * f + k:]
            s = acc[k]
            for xx in range(wo):
                g = src[xx * f]
                if relu:
                    g = g if msk[xx * f] > zero else zero
                s += g
                dst[xx] = g
            acc[k] = s
    for k in range(f):
        db[k] = acc[k]


@njit
def _pool_to_planar(pbits, parg, pout, relu, dzb, start, wp):
    """The d(out) that the 2x2/2 max pool after this conv (and its ReLU) routes back, into dz
    as _mask_to_planar writes it (without the bias gradient: _bias_sums): pdout (Ho/2, Wo/2,
    F) goes to the window position parg (0-3, raster order), 0 elsewhere, and 0 where the
    fused ReLU gave 0 (if `relu`): at the window's winner, the output is the pool's, pout; the
    same values as the pool's backward pass followed by _mask_to_planar. pbits and dzb are
    pdout and dz viewed as integers of their size: each value is kept or zeroed by a bitwise
    and with an all-ones or all-zeros mask, as the window position is a coin toss that a
    branch (and Numba's selects, here) mispredicts (measured 3x faster)."""
    ho2, wo2, f = pout.shape
    zero = pout.dtype.type(0.0)
    gn, an, on = pbits.reshape(-1), parg.reshape(-1), pout.reshape(-1)
    for i in range(ho2):
        for k in range(f):
            d0, d1 = dzb[k, start + 2 * i * wp:], dzb[k, start + (2 * i + 1) * wp:]
            src, arg, top = gn[i * wo2 * f + k:], an[i * wo2 * f + k:], on[i * wo2 * f + k:]
            for j in range(wo2):
                t = j * f
                g, at = src[t], arg[t]
                if relu:
                    g &= -np.int32(top[t] > zero)
                d0[2 * j] = g & -np.int32(at == 0)
                d0[2 * j + 1] = g & -np.int32(at == 1)
                d1[2 * j] = g & -np.int32(at == 2)
                d1[2 * j + 1] = g & -np.int32(at == 3)


@njit
def _bias_sums(dz, db, start, wp, ho, wo):
    """db[k] += the sum of dz[k, start + y*wp + x] over y < ho, x < wo, in _mask_to_planar's
    order (float64, rounded once per image): four filters' sums at a time, so that four
    chains of dependent adds overlap (measured 2x faster than one)."""
    f = dz.shape[0]
    for k0 in range(0, f - 3, 4):
        s0, s1 = np.float64(db[k0]), np.float64(db[k0 + 1])
        s2, s3 = np.float64(db[k0 + 2]), np.float64(db[k0 + 3])
        for y in range(ho):
            p = start + y * wp
            r0, r1, r2, r3 = dz[k0, p:], dz[k0 + 1, p:], dz[k0 + 2, p:], dz[k0 + 3, p:]
            for xx in range(wo):
                s0 += r0[xx]
                s1 += r1[xx]
                s2 += r2[xx]
                s3 += r3[xx]
        db[k0], db[k0 + 1], db[k0 + 2], db[k0 + 3] = s0, s1, s2, s3
    for k in range(f - f % 4, f):
        s = np.float64(db[k])
        for y in range(ho):
            src = dz[k, start + y * wp:]
            for xx in range(wo):
                s += src[xx]
        db[k] = s


@njit
def _hand_back(even, odd, a, a_start, relu, zp, start, wp, w, m):
    """zp[c, start + P] = ox[c, P] (the input gradient, o's even and odd rows), zeroed where
    the ReLU before (if `relu`) gave 0, i.e. where this conv's input a[c, a_start + P] <= 0,
    and where P % wp >= w: the previous direct conv's dz, as its _mask_to_planar would write
    it."""
    zero = zp.dtype.type(0.0)
    for ch in range(zp.shape[0]):
        src = even[ch // 2] if ch % 2 == 0 else odd[ch // 2]
        for p0 in range(0, m, wp):
            row, dst, inp = src[p0:], zp[ch, start + p0:], a[ch, a_start + p0:]
            for xx in range(w):
                g = row[xx]
                if relu:
                    g = g if inp[xx] > zero else zero
                dst[xx] = g
            for xx in range(w, wp):
                dst[xx] = zero


@njit
def backward(planar, source, dout, pbits, parg, pout, dz_in, out, relu, wb, dw, db, dx,
             want_dx, pad, dz, dzb, acc, ox_even, ox_odd, zp, zp_start, zp_relu):
    """Gradients of `forward`: dw (C, 3, 3, F) (as dw[c, ky, kx, f] = dW[ky, kx, c, f]), db (F,)
    and, if `want_dx`, the input gradient. planar: what `forward` left there. d(loss)/d(out)
    comes from `source`:
      0: dout (N, Ho, Wo, F), masked here where the fused ReLU's output `out` is zero (if
         `relu`), in the same pass that moves it into dz (whose padding must be zero; dzb: dz
         viewed as integers) and sums the bias gradient (acc: (F,) float64 scratch);
      1: the 2x2/2 max pool after this layer: its d(out) (N, Ho/2, Wo/2, F), viewed as
         integers in pbits, window positions parg and output pout, routed and masked into dz
         (`out` is not read);
      2: dz_in (N, F, Ld): already in dz's layout and masked (the next direct conv handed it
         back).
    The input gradient goes to dx (N, H, W, C) if zp is empty, else into zp (N, C, Lz) from
    zp_start on, in the previous direct conv's dz layout, masked by its ReLU if `zp_relu`.
    wb (F, 3, 3, C): wb[f, ky, kx, c] = W[2-ky, 2-kx, c, f]."""
    _, ho, wo, f = out.shape
    n_ = planar.shape[0]
    w = wo + 2 - 2 * pad
    h = ho + 2 - 2 * pad
    wp = w + 2 * pad
    q = 2 - pad  # the input gradient's padding
    m = ho * wp
    start = q + q * wp  # dz[f, start + y*wp + x] = dout[y, x, f]
    dw[:] = 0.0
    db[:] = 0.0
    for n in range(n_):
        if source == 2:
            d = dz_in[n]
            _bias_sums(d, db, start, wp, ho, wo)
        else:
            d = dz
            if source == 1:
                _pool_to_planar(pbits[n], parg[n], pout[n], relu, dzb, start, wp)
                _bias_sums(dz, db, start, wp, ho, wo)
            else:
                _mask_to_planar(dout[n], out[n], relu, db, acc, dz, start, wp)
        a = planar[n]
        correlate_grad(a, d, start, dw, wp, m)
        if want_dx:
            correlate(d, wb, ox_even, ox_odd, wp, h * wp)
            if zp.shape[0] > 0:
                _hand_back(ox_even, ox_odd, a, pad * wp + pad, zp_relu, zp[n], zp_start, wp, w,
                           h * wp)
            else:
                _from_planar(ox_even, ox_odd, dx[n], wp, None, False)
