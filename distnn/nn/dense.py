"""Fully connected layer and Flatten."""

from __future__ import annotations

import numpy as np

from distnn.nn import threads
from distnn.nn.base import Layer
from distnn.nn.errors import ShapeError, SpecError
from distnn.nn.init import fill_normal, init_std


class Flatten(Layer):
    """x: (N, H, W, C) -> (N, H*W*C) in NHWC order (a view of x, no copy; a Sequential never
    hands it back to its caller, see Sequential.forward)."""

    kind = "flatten"

    def _build(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, x, training):
        self.check_input(x)
        return x.reshape(x.shape[0], -1)

    def backward(self, dout):
        return dout.reshape((dout.shape[0],) + self.in_shape)


def cuts(size: int, work: int) -> list[tuple[int, int]]:
    """[a, b) pieces of one of a dense layer's dimensions (`size` long) that its GEMMs are cut
    along, to run on distnn.nn.threads: at most Dense.PIECES, at least Dense.MIN_WORK
    multiply-adds of the GEMM's `work` each, multiples of 16 long but the last. They depend on
    the shapes only, so any thread count computes the same pieces: the same bits."""
    count = max(1, min(Dense.PIECES, work // Dense.MIN_WORK, size // 16))
    step = -(-size // count)
    step = -(-step // 16) * 16
    return [(a, min(size, a + step)) for a in range(0, size, step)]


class Dense(Layer):
    """x: (N, D) -> out: (N, U) = x @ W + b. Parameters: W (D, U), b (U,).

    Each GEMM is cut into pieces along a dimension that is not summed over (the output
    columns U forward; the inputs D for dW = x^T dout and dx = dout W^T), one task each on the
    thread pool: no partial sums, so the thread count changes nothing but the time."""

    kind = "dense"
    # The cifar net's 4096 -> 256 layer at batch 128 (134 M multiply-adds per GEMM), forward +
    # backward in `python -m benchmarks.step_throughput --model cifar --threads {1,2}
    # --profile`: 10.5 ms on one thread whole or in 4 pieces; on two threads 10.6 ms whole,
    # 6.5 ms in 4 pieces (alone, each GEMM 1.8x faster in 4 pieces, 1.9x in 2; 6 % slower in 4
    # than whole on one thread forward, 2 % backward). Smaller GEMMs: fewer pieces.
    PIECES = 4
    MIN_WORK = 1 << 22

    def __init__(self, units: int, init: str = "he", name: str | None = None):
        super().__init__(name)
        if not isinstance(units, (int, np.integer)) or isinstance(units, bool) or units < 1:
            raise SpecError(f"{self.name}: units={units!r}, expected an integer >= 1")
        self.units, self.init = int(units), init
        self.fuse_relu = False
        init_std(init, 1, 1, self.name)

    def _build(self, in_shape):
        if len(in_shape) != 1:
            raise ShapeError(
                f"{self.name}: input per-sample shape {in_shape}, expected (D,); "
                f"put a flatten layer before it"
            )
        return (self.units,)

    def param_shapes(self):
        return {"W": (self.in_shape[0], self.units), "b": (self.units,)}

    def decayed(self):
        return ("W",)

    def init_params(self, rng):
        fill_normal(self.p["W"], init_std(self.init, self.in_shape[0], self.units, self.name), rng)
        self.p["b"][...] = 0.0

    def forward(self, x, training):
        self.check_input(x)
        out = self.buffer("out", (x.shape[0], self.units))
        w, b = self.p["W"], self.p["b"]
        pieces = cuts(self.units, x.size * self.units)

        def job(_w: int, i: int) -> None:
            u0, u1 = pieces[i]
            o = out[:, u0:u1]
            np.matmul(x, w[:, u0:u1], out=o)
            o += b[u0:u1]
            if self.fuse_relu:
                np.maximum(o, 0, out=o)

        threads.run(job, range(len(pieces)))
        self._x = x
        return out

    def backward(self, dout):
        x, w, gw = self._x, self.p["W"], self.g["W"]
        np.sum(dout, axis=0, out=self.g["b"])
        dx = self.input_grad_buffer(x.shape, dout) if self.input_grad else None
        pieces = cuts(x.shape[1], x.size * self.units)

        def job(_w: int, i: int) -> None:
            d0, d1 = pieces[i]
            np.matmul(x[:, d0:d1].T, dout, out=gw[d0:d1])
            if dx is not None:
                np.matmul(dout, w[d0:d1].T, out=dx[:, d0:d1])

        threads.run(job, range(len(pieces)))
        return dx

    def describe(self):
        return f"dense -> {self.units}"
