"""Fully connected layer and Flatten."""

from __future__ import annotations

import numpy as np

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


class Dense(Layer):
    """x: (N, D) -> out: (N, U) = x @ W + b. Parameters: W (D, U), b (U,)."""

    kind = "dense"

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
        np.matmul(x, self.p["W"], out=out)
        out += self.p["b"]
        if self.fuse_relu:
            np.maximum(out, 0, out=out)
        self._x = x
        return out

    def backward(self, dout):
        np.matmul(self._x.T, dout, out=self.g["W"])
        np.sum(dout, axis=0, out=self.g["b"])
        if not self.input_grad:
            return None
        dx = self.buffer("dx", self._x.shape)
        np.matmul(dout, self.p["W"].T, out=dx)
        return dx

    def describe(self):
        return f"dense -> {self.units}"
