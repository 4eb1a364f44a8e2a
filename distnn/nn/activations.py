"""Elementwise activations, PReLU and Maxout. Shapes are preserved except by Maxout (last axis
/ k)."""

from __future__ import annotations

import math

import numpy as np

from distnn.nn import kernels
from distnn.nn.base import Layer, is_number
from distnn.nn.errors import ShapeError, SpecError
from distnn.nn.jit import njit


def _check_alpha(layer, alpha, key="alpha"):
    if not is_number(alpha) or not 0 <= alpha < math.inf:
        raise SpecError(f"{layer.name}: {key}={alpha!r}, expected a finite number >= 0")
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


@njit
def prelu_forward(x2d, a, out2d):
    """out2d (M, C) = x2d where x2d > 0, else a[c] * x2d (channel c: the column)."""
    m, c = x2d.shape
    for r in range(m):
        for k in range(c):
            v = x2d[r, k]
            out2d[r, k] = v if v > 0.0 else a[k] * v


@njit
def prelu_backward_(dout2d, x2d, a, da, input_grad):
    """One pass over dout2d (M, C): da (C,) float64 = column sums of dout2d * x2d where
    x2d <= 0, added row by row in order (the same bits on any thread count); then, if
    `input_grad`, in place dout2d *= a[c] where x2d <= 0 (d(loss)/d(x))."""
    m, c = dout2d.shape
    da[:] = 0.0
    for r in range(m):
        for k in range(c):
            v = x2d[r, k]
            if not v > 0.0:
                g = dout2d[r, k]
                da[k] += np.float64(g) * np.float64(v)  # exact for float32 (float() is not)
                if input_grad:
                    dout2d[r, k] = a[k] * g


class PReLU(Layer):
    """x if x > 0 else a_c * x, with a learned slope a_c per channel (the last axis: C of an
    NHWC map, D of (N, D) vectors; He et al. 2015). Parameter a (C,), starting at `init`
    everywhere; never weight-decayed. The slope gradient is summed in float64 and rounded once.
    """

    kind = "prelu"

    def __init__(self, init: float = 0.25, name=None):
        super().__init__(name)
        self.init = _check_alpha(self, init, "init")

    def param_shapes(self):
        return {"a": (self.in_shape[-1],)}

    def init_params(self, rng):
        self.p["a"][...] = self.init

    def forward(self, x, training):
        self.check_input(x)
        c = x.shape[-1]
        out = self.buffer("out", x.shape)
        # A view for every array a layer hands on; a copy only for a strided caller's array.
        prelu_forward(x.reshape(-1, c), self.p["a"], out.reshape(-1, c))
        self._x = x
        return out

    def backward(self, dout):
        c = dout.shape[-1]
        if not dout.flags.c_contiguous:  # written in place below: a reshape must be a view
            dout = np.ascontiguousarray(dout)
        da = self.buffer("da", (c,), np.float64)
        # In place: the layer after us is done with dout.
        prelu_backward_(dout.reshape(-1, c), self._x.reshape(-1, c), self.p["a"], da,
                        self.input_grad)
        self.g["a"][...] = da
        return dout if self.input_grad else None

    def describe(self):
        return f"prelu init={self.init:g}"


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
