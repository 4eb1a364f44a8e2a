"""Gradient checking: analytic gradients against centred finite differences, in float64."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 1e-4) -> float:
    """Elementwise max of |a - b| / (|a| + |b|), the usual relative error of a gradient.

    The denominator is floored at `floor` times the largest magnitude in a or b: an entry a
    million times smaller than the rest carries finite-difference round-off (~eps*f/h) that
    says nothing about the analytic gradient.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = max(float(np.max(np.abs(a), initial=0)), float(np.max(np.abs(b), initial=0)))
    denom = np.maximum(np.abs(a) + np.abs(b), max(floor * scale, 1e-300))
    return float(np.max(np.abs(a - b) / denom, initial=0))


def numerical_grad(f: Callable[[], float], x: np.ndarray, h: float = 1e-5,
                   max_checks: int | None = None, rng: np.random.Generator | None = None):
    """Centred differences (f(x+h) - f(x-h)) / 2h of scalar f() w.r.t. x, perturbing x in place.

    Returns (indices, grads): all flat (C-order) indices, or `max_checks` of them drawn from
    `rng`. `x` may be any view (non-contiguous too): it is nudged where it lies.
    """
    idx = np.arange(x.size)
    if max_checks is not None and x.size > max_checks:
        idx = (rng or np.random.default_rng(0)).choice(x.size, max_checks, replace=False)
    grads = np.empty(idx.size)
    for k, i in enumerate(idx):
        at = np.unravel_index(i, x.shape)
        old = x[at]
        x[at] = old + h
        fp = f()
        x[at] = old - h
        fm = f()
        x[at] = old
        grads[k] = (fp - fm) / (2 * h)
    return idx, grads


def check_layer(layer, x: np.ndarray, training: bool = True, seed: int = 0,
                max_checks: int = 60, h: float = 1e-5) -> dict[str, float]:
    """Relative errors of d(sum(out * r))/d(x) and of every parameter gradient of a built, bound
    float64 layer, for a fixed random projection r of its output. Keys: 'x' and parameter names.
    """
    rng = np.random.default_rng(seed)
    out = layer.forward(x, training)
    r = rng.standard_normal(out.shape)
    state = getattr(layer, "rng", None)

    def f():
        if state is not None:  # dropout: the same mask on every evaluation
            layer.rng = np.random.default_rng(seed)
        return float(np.sum(layer.forward(x, training) * r))

    f()
    dx = layer.backward(r.copy())
    errors = {}
    if dx is not None:
        idx, num = numerical_grad(f, x, h, max_checks, rng)
        errors["x"] = rel_error(np.asarray(dx).reshape(-1)[idx], num)
    for name, p in layer.p.items():
        analytic = layer.g[name].copy()
        idx, num = numerical_grad(f, p, h, max_checks, rng)
        errors[name] = rel_error(analytic.reshape(-1)[idx], num)
    return errors
