"""Elementwise activations and Maxout. Shapes are preserved except by Maxout (last axis / k)."""

from __future__ import annotations

import math

import numpy as np

from distnn.nn import kernels
from distnn.nn.base import Layer, is_number
from distnn.nn.errors import ShapeError, SpecError


def _check_alpha(layer, alpha):
    if not is_number(alpha) or not 0 <= alpha < math.inf:
        raise SpecError(f"{layer.name}: alpha={alpha!r}, expected a finite number >= 0")
    return float(alpha)


class ReLU(Layer):
    """max(0, x). When the layer before it already applied the ReLU (fused), forward is free."""

    kind = "relu"

    def __init__(self, name=None):
        super().__init__(name)
        self.fused = False  # the layer before applied max(0, .) in its forward pass
        self.fused_backward = False  # ... and applies the mask in its backward pass too

    def forward(self, x, training):
        self.check_input(x)
        out = x if self.fused else np.maximum(x, 0, out=self.buffer("out", x.shape))
        self._out = out
        return out

    def backward(self, dout):
        if self.fused and self.fused_backward:
            return dout  # the conv before us applies the mask with its bias gradient
        # In place: the layer after us is done with dout.
        kernels.relu_backward_(dout.reshape(-1), self._out.reshape(-1))
        return dout


class LeakyReLU(Layer):
    """x if x > 0 else alpha * x."""

    kind = "leaky_relu"

    def __init__(self, alpha: float = 0.01, name=None):
        super().__init__(name)
        self.alpha = _check_alpha(self, alpha)

    def forward(self, x, training):
        self.check_input(x)
        self._x = x
        return np.where(x > 0, x, self.dtype.type(self.alpha) * x)

    def backward(self, dout):
        return np.where(self._x > 0, dout, self.dtype.type(self.alpha) * dout)


class ELU(Layer):
    """x if x > 0 else alpha * (exp(x) - 1)."""

    kind = "elu"

    def __init__(self, alpha: float = 1.0, name=None):
        super().__init__(name)
        self.alpha = _check_alpha(self, alpha)

    def forward(self, x, training):
        self.check_input(x)
        a = self.dtype.type(self.alpha)
        self._x = x
        self._neg = a * np.expm1(np.minimum(x, 0))
        return np.where(x > 0, x, self._neg)

    def backward(self, dout):
        a = self.dtype.type(self.alpha)
        return np.where(self._x > 0, dout, dout * (self._neg + a))


class Tanh(Layer):
    kind = "tanh"

    def forward(self, x, training):
        self.check_input(x)
        self._out = np.tanh(x)
        return self._out

    def backward(self, dout):
        return dout * (1 - self._out * self._out)


class Sigmoid(Layer):
    kind = "sigmoid"

    def forward(self, x, training):
        self.check_input(x)
        # exp of a non-positive number never overflows: split by sign for stability.
        e = np.exp(-np.abs(x))
        self._out = np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(self.dtype, copy=False)
        return self._out

    def backward(self, dout):
        return dout * self._out * (1 - self._out)


class Maxout(Layer):
    """Max over k linear pieces: the last axis (size D = U*k, from the preceding dense or conv)
    is split into U groups of k consecutive features and each group's maximum is kept.

    x: (N, ..., U*k) -> (N, ..., U).
    """

    kind = "maxout"

    def __init__(self, k: int = 2, name=None):
        super().__init__(name)
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 2:
            raise SpecError(f"{self.name}: k={k!r}, expected an integer >= 2")
        self.k = int(k)

    def _build(self, in_shape):
        if in_shape[-1] % self.k:
            raise ShapeError(
                f"{self.name}: last axis {in_shape[-1]} is not divisible by k={self.k}; "
                f"expected the previous layer to output U*k features"
            )
        return in_shape[:-1] + (in_shape[-1] // self.k,)

    def forward(self, x, training):
        self.check_input(x)
        grouped = x.reshape(x.shape[:-1] + (x.shape[-1] // self.k, self.k))
        self._arg = np.argmax(grouped, axis=-1)
        self._shape = grouped.shape
        return np.take_along_axis(grouped, self._arg[..., None], axis=-1)[..., 0]

    def backward(self, dout):
        dx = np.zeros(self._shape, dtype=dout.dtype)
        np.put_along_axis(dx, self._arg[..., None], dout[..., None], axis=-1)
        return dx.reshape(self._shape[:-2] + (self._shape[-2] * self.k,))

    def describe(self):
        return f"maxout k={self.k}"
