"""Dropout (inverted) and Batch Normalisation."""

from __future__ import annotations

import math

import numpy as np

from distnn.nn.base import Layer, is_number
from distnn.nn.errors import SpecError


class Dropout(Layer):
    """Inverted dropout: in training each unit is zeroed with probability `rate` and the rest are
    scaled by 1/(1-rate), so evaluation is the identity. `rate` is the DROP probability (the
    PyTorch/Keras convention). Masks come from the generator the model seeds for this layer.
    """

    kind = "dropout"

    def __init__(self, rate: float = 0.5, name=None):
        super().__init__(name)
        if not is_number(rate) or not 0 <= rate < 1:
            raise SpecError(f"{self.name}: rate={rate!r}, expected a number in [0, 1)")
        self.rate = float(rate)
        self.rng = np.random.default_rng(0)

    def init_params(self, rng):
        # A child generator: the layer's masks are fixed by the model seed.
        self.rng = np.random.default_rng(rng.integers(0, 2**63))

    def forward(self, x, training):
        self.check_input(x)
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        keep = self.rng.random(x.shape, dtype=self.dtype) >= self.rate
        self._mask = keep * self.dtype.type(1.0 / (1.0 - self.rate))
        return x * self._mask

    def backward(self, dout):
        return dout if self._mask is None else dout * self._mask

    def describe(self):
        return f"dropout {self.rate:g}"


class BatchNorm(Layer):
    """Batch normalisation over every axis but the last (channels of a map, or features).

    x: (N, H, W, C) or (N, D). Training normalises with the batch statistics and updates the
    running averages (running = momentum * running + (1 - momentum) * batch; variance unbiased);
    evaluation uses the running averages. Parameters gamma, beta (C,) — never weight-decayed.
    """

    kind = "batchnorm"

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5, name=None):
        super().__init__(name)
        if not is_number(momentum) or not 0 <= momentum < 1:
            raise SpecError(f"{self.name}: momentum={momentum!r}, expected a number in [0, 1)")
        if not is_number(eps) or not 0 < eps < math.inf:
            raise SpecError(f"{self.name}: eps={eps!r}, expected a finite number > 0")
        self.momentum, self.eps = float(momentum), float(eps)

    def param_shapes(self):
        c = self.in_shape[-1]
        return {"gamma": (c,), "beta": (c,)}

    def state_shapes(self):
        c = self.in_shape[-1]
        return {"running_mean": (c,), "running_var": (c,)}

    def init_params(self, rng):
        self.p["gamma"][...] = 1.0
        self.p["beta"][...] = 0.0
        self.s["running_mean"][...] = 0.0
        self.s["running_var"][...] = 1.0

    def forward(self, x, training):
        self.check_input(x)
        c = self.in_shape[-1]
        x2 = x.reshape(-1, c)
        if training:
            mean = x2.mean(axis=0)
            var = x2.var(axis=0)
            m = x2.shape[0]
            mom = self.momentum
            self.s["running_mean"][...] = mom * self.s["running_mean"] + (1 - mom) * mean
            unbiased = var * (m / max(m - 1, 1))
            self.s["running_var"][...] = mom * self.s["running_var"] + (1 - mom) * unbiased
        else:
            mean, var = self.s["running_mean"], self.s["running_var"]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(self.dtype)
        xhat = (x2 - mean) * inv_std
        self._xhat, self._inv_std, self._training = xhat, inv_std, training
        return (xhat * self.p["gamma"] + self.p["beta"]).reshape(x.shape)

    def backward(self, dout):
        c = self.in_shape[-1]
        d2 = dout.reshape(-1, c)
        xhat, inv_std = self._xhat, self._inv_std
        self.g["gamma"][...] = np.sum(d2 * xhat, axis=0)
        self.g["beta"][...] = np.sum(d2, axis=0)
        dxhat = d2 * self.p["gamma"]
        if not self._training:
            return (dxhat * inv_std).reshape(dout.shape)
        m = d2.shape[0]
        dx = (inv_std / m) * (m * dxhat - dxhat.sum(axis=0) - xhat * np.sum(dxhat * xhat, axis=0))
        return dx.reshape(dout.shape)

    def describe(self):
        return "batchnorm"
