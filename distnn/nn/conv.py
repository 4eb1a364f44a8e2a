"""2-D convolution in NHWC as one im2col (Numba) and one GEMM (BLAS)."""

from __future__ import annotations

import numpy as np

from distnn.nn import kernels
from distnn.nn.base import Layer
from distnn.nn.errors import ShapeError, SpecError
from distnn.nn.init import fill_normal, init_std


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

    def forward(self, x, training):
        self.check_input(x)
        n = x.shape[0]
        m = n * self.ho * self.wo
        cols = self.buffer("cols", (m, self.k2))
        kernels.im2col(x, cols, self.kernel, self.kernel, self.stride, self.pad, self.ho, self.wo)
        out = self.buffer("out", (n, self.ho, self.wo, self.filters))
        out2d = out.reshape(m, self.filters)
        np.matmul(cols, self.p["W"].reshape(self.k2, self.filters), out=out2d)
        kernels.bias_relu_(out2d, self.p["b"], self.fuse_relu)
        self._cols, self._n = cols, n
        return out

    def backward(self, dout):
        n, f = self._n, self.filters
        m = n * self.ho * self.wo
        dout2d = dout.reshape(m, f)
        cols = self._cols
        # The fused ReLU's mask and the bias gradient in one pass (the ReLU layer then passes
        # dout through untouched).
        out2d = self._scratch["out"].reshape(m, f)
        kernels.relu_mask_bias_grad_(dout2d, out2d, self.g["b"], self.fuse_relu)
        np.matmul(cols.T, dout2d, out=self.g["W"].reshape(self.k2, f))
        if not self.input_grad:
            return None
        # cols is no longer needed: reuse it for d(cols) instead of allocating.
        np.matmul(dout2d, self.p["W"].reshape(self.k2, f).T, out=cols)
        dx = self.buffer("dx", (n,) + self.in_shape)
        kernels.col2im(cols, dx, self.kernel, self.kernel, self.stride, self.pad, self.ho, self.wo)
        return dx

    def describe(self):
        return f"conv {self.kernel}x{self.kernel}/{self.stride} pad {self.pad} -> {self.filters}"
