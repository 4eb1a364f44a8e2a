"""Pooling layers in NHWC: max, average (Numba kernels) and global average."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from distnn.nn import kernels, threads
from distnn.nn.base import Layer
from distnn.nn.conv import Conv2D
from distnn.nn.errors import ShapeError, SpecError


def _by_images(n: int, work: Callable[[int, int], None]) -> None:
    """work(n0, n1) over contiguous runs of the batch's images, one run per thread of the pool
    (distnn/nn/threads.py). Each image's result depends on that image alone, so the split
    changes no value; one thread makes a single call."""
    k = threads.workers(n)
    runs = [(n * w // k, n * (w + 1) // k) for w in range(k)]
    threads.run(lambda _w, t: work(*runs[t]), range(k))


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

    def __init__(self, size: int = 2, stride: int | None = None, name: str | None = None):
        super().__init__(size, stride, name)
        # Set by Sequential (_wire): the conv right before (through its fused ReLU), and
        # whether Sequential.backward is running. A direct conv computes a 2x2/2 pool's output
        # in its own output pass inside Sequential.forward (`pooled_from`), and inside
        # Sequential.backward the pool leaves dx unwritten and hands its d(out) and window
        # positions to that conv, which routes them itself (conv/direct.py).
        self.producer: Conv2D | None = None
        self.wired = False

    def forward(self, x, training):
        self.check_input(x)
        n = x.shape[0]
        out = self.buffer("out", (n,) + self.out_shape)
        arg = self.buffer("arg", (n,) + self.out_shape, np.int32)
        self._n = n
        conv = self.producer
        if conv is not None and conv.handoff.pooled_from is x:  # it computed out and arg
            conv.handoff.pooled_from = None
            return out
        # (The 2x2 kernel walks flattened rows: it needs a C-contiguous array.)
        x = np.ascontiguousarray(x)
        _by_images(n, lambda n0, n1: kernels.maxpool_forward(x[n0:n1], out[n0:n1], arg[n0:n1],
                                                             self.size, self.stride))
        self._n = n
        return out

    def backward(self, dout):
        shape = (self._n,) + self.in_shape
        dout, arg = np.ascontiguousarray(dout), self._scratch["arg"]
        conv = self.producer
        if self.wired and conv is not None and conv.algorithm == "direct" \
                and self.size == self.stride == 2:
            dx = self.buffer("dx", shape)  # never written: a token (its pages stay untouched)
            conv.handoff.pool_from = (dx, dout, arg, self._scratch["out"])
            return dx
        dx = self.input_grad_buffer(shape, dout)
        _by_images(self._n, lambda n0, n1: kernels.maxpool_backward(
            dout[n0:n1], arg[n0:n1], dx[n0:n1], self.size, self.stride))
        return dx


class AvgPool2D(_Pool2D):
    kind = "avgpool"

    def forward(self, x, training):
        self.check_input(x)
        n = x.shape[0]
        out = self.buffer("out", (n,) + self.out_shape)
        _by_images(n, lambda n0, n1: kernels.avgpool_forward(x[n0:n1], out[n0:n1], self.size,
                                                             self.stride))
        self._n = n
        return out

    def backward(self, dout):
        dx = self.input_grad_buffer((self._n,) + self.in_shape, dout)
        _by_images(self._n, lambda n0, n1: kernels.avgpool_backward(dout[n0:n1], dx[n0:n1],
                                                                    self.size, self.stride))
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
        dx = self.input_grad_buffer((dout.shape[0],) + self.in_shape, dout)
        dx[...] = (dout / (h * w))[:, None, None, :]
        return dx
