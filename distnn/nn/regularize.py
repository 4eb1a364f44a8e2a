"""Dropout (inverted) and Batch Normalisation."""

from __future__ import annotations

import math

import numpy as np

from distnn.nn.base import Layer, is_number
from distnn.nn.errors import SpecError
from distnn.nn.jit import njit

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


@njit
def _mix(x):
    """splitmix64's finaliser on one uint64 (wrapping arithmetic)."""
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@njit
def keyed_mask(keys, rate, scale, out):
    """out (n, d): scale where unit j of sample i is kept, else 0. The draw of (i, j) is a hash
    of (keys[i], j) alone: a counter-based generator, so a sample's mask does not depend on
    which other samples share its batch."""
    n, d = out.shape
    threshold = np.uint64(min(int(rate * 2.0**24 + 0.5), 2**24))
    golden = np.uint64(0x9E3779B97F4A7C15)
    for i in range(n):
        base = _mix(keys[i])
        for j in range(d):
            word = _mix(base + np.uint64(j + 1) * golden)
            out[i, j] = scale if (word >> np.uint64(40)) >= threshold else 0.0


def sample_keys(seed: int, layer: int, step: int, indices: np.ndarray) -> np.ndarray:
    """(n,) uint64 keys of the masks of dropout layer number `layer` at `step` for the samples
    of dataset `indices`: a pure function of these, never of the rank or the batch."""
    head = np.random.SeedSequence([0x44524F50, seed, layer, step]).generate_state(1, np.uint64)[0]
    with np.errstate(over="ignore"):
        return np.asarray(indices, dtype=np.uint64) * _GOLDEN + head


class Dropout(Layer):
    """Inverted dropout: in training each unit is zeroed with probability `rate` and the rest are
    scaled by 1/(1-rate), so evaluation is the identity. `rate` is the DROP probability (the
    PyTorch/Keras convention). Masks come from the generator the model seeds for this layer,
    or, once `keys` holds one uint64 per sample of the next batch (set by a world-size
    invariant step), from a hash of each sample's key: then a sample's mask is the same in
    any batch (distnn/train/invariant.py).
    In evaluation `forward` returns x itself and `backward` dout itself (no copy); a
    Sequential never hands them back to its caller (see Sequential.forward / backward).
    """

    kind = "dropout"

    def __init__(self, rate: float = 0.5, name=None):
        super().__init__(name)
        if not is_number(rate) or not 0 <= rate < 1:
            raise SpecError(f"{self.name}: rate={rate!r}, expected a number in [0, 1)")
        self.rate = float(rate)
        self.rng = np.random.default_rng(0)
        self.keys: np.ndarray | None = None

    def init_params(self, rng):
        # A child generator: the layer's masks are fixed by the model seed.
        self.rng = np.random.default_rng(rng.integers(0, 2**63))

    def forward(self, x, training):
        self.check_input(x)
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        scale = self.dtype.type(1.0 / (1.0 - self.rate))
        if self.keys is not None:
            if len(self.keys) != len(x):
                raise ValueError(f"{self.name}: {len(self.keys)} sample keys for a batch of "
                                 f"{len(x)}")
            self._mask = self.buffer("mask", x.shape)
            keyed_mask(self.keys, self.rate, scale, self._mask.reshape(len(x), -1))
        else:
            keep = self.rng.random(x.shape, dtype=self.dtype) >= self.rate
            self._mask = keep * scale
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

    In a world-size invariant step (distnn/nn/lockstep.py) the batch statistics are those of
    the whole global batch when `sync` (SyncBatchNorm), else of the rank's share of it; that
    step uses the grouped methods below instead of forward/backward.
    """

    kind = "batchnorm"

    def __init__(self, momentum: float = 0.9, eps: float = 1e-5, sync: bool = True, name=None):
        super().__init__(name)
        if not isinstance(sync, bool):
            raise SpecError(f"{self.name}: sync={sync!r}, expected true or false")
        self.sync = sync
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

    # -- the grouped form: statistics summed over many groups (and ranks) by the caller ------
    def group_sums(self, x):
        """(2, C) float64: per-channel sum of x and of x*x over this group."""
        self.check_input(x)
        x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
        return np.stack([x2.sum(axis=0), np.einsum("ij,ij->j", x2, x2)])

    def batch_moments(self, sums, count: int):
        """(mean, biased variance) float64 (C,) from the summed group_sums of `count` rows;
        updates the running averages (once per batch: call on one replica only)."""
        if count == 0:  # no sample on this rank (per-rank statistics): nothing to learn
            return np.zeros_like(sums[0]), np.ones_like(sums[0])
        mean = sums[0] / count
        var = np.maximum(sums[1] / count - mean * mean, 0.0)
        mom = self.momentum
        self.s["running_mean"][...] = mom * self.s["running_mean"] + (1 - mom) * mean
        unbiased = var * (count / max(count - 1, 1))
        self.s["running_var"][...] = mom * self.s["running_var"] + (1 - mom) * unbiased
        return mean, var

    def normalize(self, x, mean, var):
        """The training forward pass of this group with the given batch moments."""
        c = x.shape[-1]
        inv_std = (1.0 / np.sqrt(var + self.eps)).astype(self.dtype)
        xhat = (x.reshape(-1, c) - mean.astype(self.dtype)) * inv_std
        self._xhat, self._inv_std, self._training = xhat, inv_std, True
        return (xhat * self.p["gamma"] + self.p["beta"]).reshape(x.shape)

    def backward_sums(self, dout):
        """(2, C) float64: sum of dout and of dout*xhat over this group; also this group's part
        of the gamma and beta gradients."""
        d2 = dout.reshape(-1, self._xhat.shape[1])
        self.g["gamma"][...] = np.sum(d2 * self._xhat, axis=0)
        self.g["beta"][...] = np.sum(d2, axis=0)
        wide = d2.astype(np.float64)
        return np.stack([wide.sum(axis=0), np.einsum("ij,ij->j", wide, self._xhat)])

    def backward_finish(self, dout, sums, count: int):
        """d(loss)/d(x) of this group from the summed backward_sums of the `count` rows."""
        d2 = dout.reshape(-1, self._xhat.shape[1])
        gamma = self.p["gamma"]
        dxhat = d2 * gamma
        mean_d = (gamma * sums[0] / count).astype(self.dtype)
        mean_dx = (gamma * sums[1] / count).astype(self.dtype)
        dx = self._inv_std * (dxhat - mean_d - self._xhat * mean_dx)
        return dx.reshape(dout.shape)

    def describe(self):
        return "batchnorm" if self.sync else "batchnorm (per rank)"
