"""Adam (Kingma & Ba 2015) and AdamW (Loshchilov & Hutter 2019) over one flat buffer, in place.

params, grads, m, v, decay_mask: (P,) arrays. See distnn.optim.rules for the shared contract.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from distnn.optim._check import array_desc
from distnn.optim.hparams import HParam
from distnn.optim.rules import EPS, UpdateRule


def _beta(key: str, default: float) -> HParam:
    return HParam(key, default, low=0.0, high=1.0, high_open=True)


class Adam(UpdateRule):
    """m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2;  t += 1
    x -= lr m_hat / (sqrt(v_hat) + eps), with m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t).
    beta1, beta2 in [0, 1); eps > 0.
    """

    name, buffers, nonnegative = "adam", ("m", "v"), ("v",)
    hparams: ClassVar[tuple[HParam, ...]] = (_beta("beta1", 0.9), _beta("beta2", 0.999), EPS)
    beta1: float
    beta2: float
    eps: float

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        f = params.dtype.type
        m, v, tmp = self.state["m"], self.state["v"], self._scratch
        m *= f(self.beta1)
        np.multiply(grads, f(1.0 - self.beta1), out=tmp)
        m += tmp
        v *= f(self.beta2)
        np.multiply(grads, grads, out=tmp)
        tmp *= f(1.0 - self.beta2)
        v += tmp
        # lr m_hat / (sqrt(v_hat) + eps) = [lr sqrt(c2) / c1] m / (sqrt(v) + eps sqrt(c2)):
        # both corrections fold into two scalars, so no (P,) buffer holds m_hat or v_hat.
        c1, c2 = 1.0 - self.beta1 ** self.t, 1.0 - self.beta2 ** self.t
        np.sqrt(v, out=tmp)
        tmp += f(self.eps * math.sqrt(c2))
        np.divide(m, tmp, out=tmp)
        tmp *= f(float(lr) * math.sqrt(c2) / c1)
        params -= tmp


class AdamW(Adam):
    """Adam plus decoupled weight decay, applied before the Adam step to the same x:
    x -= lr * weight_decay * mask * x, where mask (P,) is 1 for decayed entries (weights) and 0
    elsewhere (biases, ...); decay_mask=None decays every entry. The decay is scaled by lr (as in
    PyTorch), so a schedule shrinks it too; it never passes through m or v (that is the point).
    weight_decay >= 0; its default 0 (no decay until set) is what the config has always given.
    """

    name, uses_decay_mask = "adamw", True
    hparams = Adam.hparams + (HParam("weight_decay", 0.0, low=0.0),)
    weight_decay: float

    def __init__(self, *, decay_mask: np.ndarray | None = None, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.decay_mask = None if decay_mask is None else _checked_mask(decay_mask)
        if self.decay_mask is not None:
            self._size = self.decay_mask.size
        self._mask: np.ndarray | None = None  # decay_mask in the params' dtype

    def _allocate(self, params: np.ndarray) -> None:
        super()._allocate(params)
        if self.decay_mask is not None:
            self._mask = self.decay_mask.astype(params.dtype)

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        if self.weight_decay:
            tmp = self._scratch
            np.multiply(params, params.dtype.type(float(lr) * self.weight_decay), out=tmp)
            if self._mask is not None:
                tmp *= self._mask
            params -= tmp
        super()._update(params, grads, lr)


def _checked_mask(mask: Any) -> np.ndarray:
    """A private float64 copy of a (P,) mask of zeros and ones (the model may change its own)."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 1 or mask.dtype.kind not in "fiub":
        raise ValueError(f"adamw: decay_mask is {array_desc(mask)}, expected a 1-D array of "
                         "0 and 1 the size of the parameters")
    mask = mask.astype(np.float64)
    if not bool(np.all((mask == 0) | (mask == 1))):
        bad = float(mask[(mask != 0) & (mask != 1)][0])
        raise ValueError(f"adamw: decay_mask holds {bad!r}, expected only 0 and 1")
    return mask
