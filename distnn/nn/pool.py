"""Pooling layers in NHWC: max, average (Numba kernels) and global average."""

from __future__ import annotations

import numpy as np

from distnn.nn import kernels
from distnn.nn.base import Layer
from distnn.nn.errors import ShapeError, SpecError


class _Pool2D(Layer):
    """x: (N, H, W, C) -> (N, Ho, Wo, C) with Ho = (H - size) / stride + 1 (must be integral)."""

    def __init__(self, size: int = 2, stride: int | None = None, name: str | None = None):
        super().__init__(name)
        stride = size if stride is None else stride
        for key, val in (("size", size), ("stride", stride)):
            if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < 1:
                raise SpecError(f"{self.name}: {key}={val!r}, expected an integer >= 1")
        self.size, self.stride = int(size), int(stride)

    def _build(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: input per-sample shape {in_shape}, expected (H, W, C)")
        h, w, c = in_shape
        ho = kernels.output_size(h, self.size, self.stride, 0, f"{self.name} height")
        wo = kernels.output_size(w, self.size, self.stride, 0, f"{self.name} width")
        return (ho, wo, c)

    def describe(self):
        return f"{self.kind} {self.size}x{self.size}/{self.stride}"


class MaxPool2D(_Pool2D):
    kind = "maxpool"

    def forward(self, x, training):
        self.check_input(x)
        n = x.shape[0]
        out = self.buffer("out", (n,) + self.out_shape)
        arg = self.buffer("arg", (n,) + self.out_shape, np.int32)
        # (The 2x2 kernel walks flattened rows: it needs a C-contiguous array.)
        kernels.maxpool_forward(np.ascontiguousarray(x), out, arg, self.size, self.stride)
        self._n = n
        return out

    def backward(self, dout):
        dx = self.buffer("dx", (self._n,) + self.in_shape)
        kernels.maxpool_backward(np.ascontiguousarray(dout), self._scratch["arg"], dx, self.size,
                                 self.stride)
        return dx


class AvgPool2D(_Pool2D):
    kind = "avgpool"

    def forward(self, x, training):
        self.check_input(x)
        n = x.shape[0]
        out = self.buffer("out", (n,) + self.out_shape)
        kernels.avgpool_forward(x, out, self.size, self.stride)
        self._n = n
        return out

    def backward(self, dout):
        dx = self.buffer("dx", (self._n,) + self.in_shape)
        kernels.avgpool_backward(dout, dx, self.size, self.stride)
        return dx


class GlobalAvgPool(Layer):
    """x: (N, H, W, C) -> (N, C), the mean over all positions of each channel."""

    kind = "globalavgpool"

    def _build(self, in_shape):
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: input per-sample shape {in_shape}, expected (H, W, C)")
        return (in_shape[2],)

    def forward(self, x, training):
        self.check_input(x)
        out = self.buffer("out", (x.shape[0], self.in_shape[2]))
        np.mean(x, axis=(1, 2), out=out)
        return out

    def backward(self, dout):
        h, w, _ = self.in_shape
        dx = self.buffer("dx", (dout.shape[0],) + self.in_shape)
        dx[...] = (dout / (h * w))[:, None, None, :]
        return dx
