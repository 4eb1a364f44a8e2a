"""2-D convolution in NHWC: im2col (Numba) + GEMM (BLAS) chunk by chunk of images, Winograd
F(2x2, 3x3) for wide 3x3 convs, or a direct Numba kernel for thin 3x3 convs."""

from __future__ import annotations

import numpy as np

from distnn.nn import direct, kernels, threads, winograd
from distnn.nn.base import Layer
from distnn.nn.errors import ShapeError, SpecError
from distnn.nn.init import fill_normal, init_std

# Rows of the im2col matrix processed at a time (see Conv2D._chunk); measured with
# `python -m benchmarks.step_throughput --model cifar --batch 128 --threads 1`.
CHUNK_ROWS = 1024
# Winograd tiles (2x2 outputs each) processed at a time, chosen the same way.
CHUNK_TILES = 256


class Conv2D(Layer):
    """Convolution with F filters of KH×KW, stride S, zero padding P.

    x: (N, H, W, C) -> out: (N, Ho, Wo, F), Ho = (H - KH + 2P) / S + 1 (must be integral).
    Parameters: W (KH, KW, C, F), b (F,). When followed by a ReLU the model fuses the bias add
    and the activation into one pass (`fuse_relu`).
    """

    kind = "conv"

    def __init__(self, filters: int, kernel: int = 3, stride: int = 1, pad: int = 0,
                 init: str = "he", name: str | None = None):
        super().__init__(name)
        for key, val, low in (("filters", filters, 1), ("kernel", kernel, 1),
                              ("stride", stride, 1), ("pad", pad, 0)):
            if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < low:
                raise SpecError(f"{self.name}: {key}={val!r}, expected an integer >= {low}")
        self.filters, self.kernel, self.stride, self.pad = int(filters), int(kernel), int(stride), int(pad)
        self.init = init
        self.fuse_relu = False
        init_std(init, 1, 1, self.name)  # validate the name early

    def _build(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: input per-sample shape {in_shape}, expected (H, W, C)")
        h, w, c = in_shape
        k, s, p = self.kernel, self.stride, self.pad
        self.ho = kernels.output_size(h, k, s, p, f"{self.name} height")
        self.wo = kernels.output_size(w, k, s, p, f"{self.name} width")
        self.k2 = k * k * c
        # F(2x2, 3x3) Winograd where it applies and pays (2.25x fewer multiplies), the direct
        # kernel for thin 3x3 convs, else im2col + GEMM. All three compute the same function
        # (tests/nn/test_conv_algorithms.py).
        if winograd.usable(k, s, self.ho, self.wo) and winograd.worthwhile(c, self.filters):
            self.algorithm = "winograd"
        elif direct.usable(k, s, p) and direct.worthwhile(c, self.filters):
            self.algorithm = "direct"
        else:
            self.algorithm = "im2col"
        return (self.ho, self.wo, self.filters)

    def param_shapes(self):
        k, c = self.kernel, self.in_shape[2]
        return {"W": (k, k, c, self.filters), "b": (self.filters,)}

    def decayed(self):
        return ("W",)

    def init_params(self, rng):
        std = init_std(self.init, self.k2, self.kernel * self.kernel * self.filters, self.name)
        fill_normal(self.p["W"], std, rng)
        self.p["b"][...] = 0.0

    def _chunk(self, n: int) -> int:
        """Images per chunk: about CHUNK_ROWS rows of im2col, so that a chunk's columns stay in
        cache between im2col and its GEMMs instead of streaming a batch-sized matrix (151 MB
        for a 32x32x32 conv at batch 128) through memory several times per step."""
        return max(1, min(n, CHUNK_ROWS // (self.ho * self.wo)))

    def forward(self, x, training):
        self.check_input(x)
        if self.algorithm == "winograd":
            self._winograd_forward(x)
        elif self.algorithm == "direct":
            self._direct_forward(np.ascontiguousarray(x))  # its kernels walk flattened rows
        else:
            self._im2col_forward(x)
        # Backward rebuilds each chunk's columns (or tiles) from x: it must not change before
        # then. The model's own buffers do not; the caller's input array (first layer) might:
        # keep a copy. (The direct form keeps its own padded copy of x.)
        if not self.input_grad and self.algorithm != "direct":
            keep = self.buffer("x", x.shape)
            keep[...] = x
            x = keep
        self._x = x
        return self._scratch["out"]

    # Chunks of images run as tasks on distnn.nn.threads (one thread unless set otherwise);
    # each worker has its own scratch buffers ("<name><worker>"), each group of chunks its own
    # partial weight gradient, summed in group order (see threads.py).

    @staticmethod
    def _chunks(n: int, step: int) -> list[tuple[int, int]]:
        return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]

    def _per_worker(self, key: str, shape, workers: int, zero: bool = False) -> list:
        return [self.buffer(f"{key}{w}", shape, zero=zero) for w in range(workers)]

    @staticmethod
    def _sum_groups(parts, out) -> None:
        """out = parts[0] + parts[1] + ... in this order (whatever the thread count)."""
        out[...] = parts[0]
        for part in parts[1:]:
            out += part

    def _im2col_forward(self, x):
        n, f, hw = x.shape[0], self.filters, self.ho * self.wo
        out = self.buffer("out", (n, self.ho, self.wo, f))
        out2d = out.reshape(n * hw, f)
        w2d, b = self.p["W"].reshape(self.k2, f), self.p["b"]
        step = self._chunk(n)
        chunks = self._chunks(n, step)
        cols = self._per_worker("cols", (step * hw, self.k2), threads.workers(len(chunks)))

        def job(w, i):
            n0, n1 = chunks[i]
            c, o = cols[w][:(n1 - n0) * hw], out2d[n0 * hw:n1 * hw]
            kernels.im2col(x[n0:n1], c, self.kernel, self.kernel, self.stride, self.pad,
                           self.ho, self.wo)
            np.matmul(c, w2d, out=o)
            kernels.bias_relu_(o, b, self.fuse_relu)

        threads.run(job, range(len(chunks)))

    def _direct_forward(self, x):
        n, c, f = x.shape[0], self.in_shape[2], self.filters
        out = self.buffer("out", (n, self.ho, self.wo, f))
        wf = self.buffer("Wf", (c, 3, 3, f))
        wf[...] = self.p["W"].transpose(2, 0, 1, 3)
        shapes = direct.buffer_shapes(n, self.in_shape, f, self.pad)
        # The kernels never write the zero padding of planar (and dz).
        planar = self.buffer("planar", shapes["planar"], zero=True)
        groups = threads.groups(n)  # chunks of one image
        k = threads.workers(len(groups))
        even = self._per_worker("o_even", shapes["o_even"], k)
        odd = self._per_worker("o_odd", shapes["o_odd"], k)

        def job(w, g):
            n0, n1 = groups[g]
            direct.forward(x[n0:n1], wf, self.p["b"], out[n0:n1], self.fuse_relu, self.pad,
                           planar[n0:n1], even[w], odd[w])

        threads.run(job, range(len(groups)))

    def _direct_backward(self, dout):
        c, f = self.in_shape[2], self.filters
        n = dout.shape[0]
        wb = self.buffer("Wb", (f, 3, 3, c))  # flipped in space, channels <-> filters
        wb[...] = self.p["W"][::-1, ::-1].transpose(3, 0, 1, 2)
        dx = self.buffer("dx", (n,) + self.in_shape) if self.input_grad else \
            self.buffer("dx_unused", (0,) + self.in_shape)
        shapes = direct.buffer_shapes(n, self.in_shape, f, self.pad)
        planar, out = self._scratch["planar"], self._scratch["out"]
        groups = threads.groups(n)
        k = threads.workers(len(groups))
        dz = self._per_worker("dz", shapes["dz"], k, zero=True)
        even = self._per_worker("ox_even", shapes["ox_even"], k)
        odd = self._per_worker("ox_odd", shapes["ox_odd"], k)
        dws = self.buffer("dW_groups", (len(groups), c, 3, 3, f))
        dbs = self.buffer("db_groups", (len(groups), f))

        def job(w, g):
            n0, n1 = groups[g]
            direct.backward(planar[n0:n1], dout[n0:n1], out[n0:n1], self.fuse_relu, wb, dws[g],
                            dbs[g], dx[n0:n1], self.input_grad, self.pad, dz[w], even[w],
                            odd[w])

        threads.run(job, range(len(groups)))
        dw = self.buffer("dWf", (c, 3, 3, f))
        self._sum_groups(dws, dw)
        self._sum_groups(dbs, self.g["b"])
        self.g["W"][...] = dw.transpose(1, 2, 0, 3)
        return dx if self.input_grad else None

    def _tiles_chunk(self, n: int) -> int:
        """Images per Winograd chunk: about CHUNK_TILES tiles (see _chunk)."""
        return max(1, min(n, CHUNK_TILES // ((self.ho // 2) * (self.wo // 2))))

    def _winograd_u(self):
        """The transformed filters U (16, C, F) of the current weights."""
        c, f = self.in_shape[2], self.filters
        g = self.buffer("G", (4, 3))
        g[...] = winograd.G
        u = self.buffer("U", (16, c, f))
        winograd.filter_transform(self.p["W"], u, g, self.buffer("u_tmp", (4, 3, c * f)))
        return u

    def _winograd_buffers(self, step: int, workers: int):
        """Per-worker V (16, rows, C) and M (16, rows, F) for chunks of `step` images."""
        rows = winograd.padded_tiles(step * (self.ho // 2) * (self.wo // 2))
        return (self._per_worker("V", (16, rows, self.in_shape[2]), workers),
                self._per_worker("M", (16, rows, self.filters), workers))

    def _winograd_forward(self, x):
        n, f = x.shape[0], self.filters
        th, tw = self.ho // 2, self.wo // 2
        out = self.buffer("out", (n, self.ho, self.wo, f))
        u = self._winograd_u()
        step = self._tiles_chunk(n)
        chunks = self._chunks(n, step)
        v, m = self._winograd_buffers(step, threads.workers(len(chunks)))

        def job(w, i):
            n0, n1 = chunks[i]
            t = (n1 - n0) * th * tw
            # The kernels take the whole (contiguous) buffers and fill the first t tiles.
            winograd.input_transform(x[n0:n1], v[w], self.pad, th, tw)
            np.matmul(v[w][:, :t], u, out=m[w][:, :t])
            winograd.output_transform(m[w], out[n0:n1], self.p["b"], self.fuse_relu, th, tw)

        threads.run(job, range(len(chunks)))

    def _winograd_backward(self, dout2d):
        x, c, f = self._x, self.in_shape[2], self.filters
        n = x.shape[0]
        th, tw = self.ho // 2, self.wo // 2
        dout = dout2d.reshape(n, self.ho, self.wo, f)
        u = self._scratch["U"]  # the weights have not changed since forward
        dx = self.buffer("dx", (n,) + self.in_shape) if self.input_grad else None
        step = self._tiles_chunk(n)
        chunks = self._chunks(n, step)
        groups = threads.groups(len(chunks))
        k = threads.workers(len(groups))
        v, dm = self._winograd_buffers(step, k)
        part = self._per_worker("dU_part", (16, c, f), k)
        dus = self.buffer("dU_groups", (len(groups), 16, c, f))

        def job(w, g):
            for i in range(*groups[g]):
                n0, n1 = chunks[i]
                t = (n1 - n0) * th * tw
                vc, dmc = v[w][:, :t], dm[w][:, :t]
                winograd.input_transform(x[n0:n1], v[w], self.pad, th, tw)
                winograd.output_transform_adjoint(dout[n0:n1], dm[w], th, tw)
                first = i == groups[g][0]
                np.matmul(vc.transpose(0, 2, 1), dmc, out=dus[g] if first else part[w])
                if not first:
                    dus[g] += part[w]
                if dx is not None:  # the chunk's V is used: reuse it for dV
                    np.matmul(dmc, u.transpose(0, 2, 1), out=vc)
                    winograd.input_transform_adjoint(v[w], dx[n0:n1], self.pad, th, tw)

        threads.run(job, range(len(groups)))
        du = self.buffer("dU", (16, c, f))
        self._sum_groups(dus, du)
        gt = self.buffer("GT", (3, 4))
        gt[...] = winograd.G.T
        winograd.filter_transform_adjoint(du, self.g["W"], gt,
                                          self.buffer("du_tmp", (3, 4, c * f)))
        return dx

    def backward(self, dout):
        if self.algorithm == "direct":  # masks the ReLU and sums the bias gradient itself
            return self._direct_backward(np.ascontiguousarray(dout))
        x, f, hw = self._x, self.filters, self.ho * self.wo
        n = x.shape[0]
        dout2d = dout.reshape(n * hw, f)
        # The fused ReLU's mask and the bias gradient in one pass (the ReLU layer then passes
        # dout through untouched).
        out2d = self._scratch["out"].reshape(n * hw, f)
        kernels.relu_mask_bias_grad_(dout2d, out2d, self.g["b"], self.fuse_relu)
        if self.algorithm == "winograd":
            return self._winograd_backward(dout2d)
        w2d = self.p["W"].reshape(self.k2, f)
        dx = self.buffer("dx", (n,) + self.in_shape) if self.input_grad else None
        step = self._chunk(n)
        chunks = self._chunks(n, step)
        groups = threads.groups(len(chunks))
        k = threads.workers(len(groups))
        cols = self._per_worker("cols", (step * hw, self.k2), k)
        part = self._per_worker("gw_part", (self.k2, f), k)
        gws = self.buffer("gw_groups", (len(groups), self.k2, f))

        def job(w, g):
            for i in range(*groups[g]):
                n0, n1 = chunks[i]
                c, d = cols[w][:(n1 - n0) * hw], dout2d[n0 * hw:n1 * hw]
                kernels.im2col(x[n0:n1], c, self.kernel, self.kernel, self.stride, self.pad,
                               self.ho, self.wo)
                first = i == groups[g][0]
                np.matmul(c.T, d, out=gws[g] if first else part[w])
                if not first:
                    gws[g] += part[w]
                if dx is not None:  # the chunk's columns are used: reuse them for d(cols)
                    np.matmul(d, w2d.T, out=c)
                    kernels.col2im(c, dx[n0:n1], self.kernel, self.kernel, self.stride,
                                   self.pad, self.ho, self.wo)

        threads.run(job, range(len(groups)))
        self._sum_groups(gws, self.g["W"].reshape(self.k2, f))
        return dx

    def describe(self):
        return f"conv {self.kernel}x{self.kernel}/{self.stride} pad {self.pad} -> {self.filters}"
