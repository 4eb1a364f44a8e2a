"""Update rules over one flat parameter buffer, in place: SGD, momentum, Nesterov, AdaGrad, RMSProp.

Every rule has `step(params, grads, lr)` with params, grads: (P,) float arrays of one dtype
(the model's contiguous float32 buffers, or float64 in tests). State buffers are (P,) arrays of
that dtype, allocated once on the first step together with one (P,) scratch buffer; after that a
step allocates nothing, because every operation writes through `out=` or an in-place operator.
Rules never see the world size: gradient averaging happens before them.

`state_dict()` holds only (P,) arrays and plain numbers (it goes into HDF5, never a pickle);
`load_state_dict(d)` checks names, types and shapes before it changes anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from distnn.optim._check import array_desc, integer, known_keys, number
from distnn.optim.hparams import Declared, HParam

EPS = HParam("eps", 1e-8, low=0.0, low_open=True)


class UpdateRule(Declared):
    """Base class. Subclasses set `name`, `hparams` (their keyword arguments, declared with
    defaults and ranges; each becomes an attribute), `buffers` (names of their (P,) state
    arrays), `nonnegative` (buffers holding sums of squares) and `_update`. A rule that decays
    weights sets `uses_decay_mask` and takes the model's mask as `decay_mask`.
    """

    name = "rule"
    buffers: ClassVar[tuple[str, ...]] = ()
    nonnegative: ClassVar[tuple[str, ...]] = ()
    uses_decay_mask: ClassVar[bool] = False

    def __init__(self, **hparams: Any) -> None:
        self._set_hparams(hparams)
        self.t = 0  # steps taken; Adam's bias correction needs it
        self.state: dict[str, np.ndarray] = {}
        self._size: int | None = None  # P when fixed at construction (AdamW's decay mask)
        self._tmp: np.ndarray | None = None  # (P,) scratch, so that a step never allocates

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """params -= update(grads), in place. params, grads: (P,) float arrays, same dtype;
        lr: the learning rate for this step (>= 0)."""
        self._check_arrays(params, grads)
        lr = number(f"{self.name}.step", "lr", lr, low=0.0)
        if self._tmp is None or self._tmp.dtype != params.dtype or self._tmp.shape != params.shape:
            self._allocate(params)
        self.t += 1
        self._update(params, grads, params.dtype.type(lr))

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        raise NotImplementedError

    @property
    def _scratch(self) -> np.ndarray:
        """The (P,) scratch buffer (allocated by the first step, before any _update)."""
        assert self._tmp is not None
        return self._tmp

    def _check_arrays(self, params: Any, grads: Any) -> None:
        ok = isinstance(params, np.ndarray) and isinstance(grads, np.ndarray)
        ok = ok and params.ndim == 1 and params.dtype.kind == "f" and params.flags.writeable
        if not (ok and grads.shape == params.shape and grads.dtype == params.dtype):
            raise ValueError(
                f"{self.name}.step: params {array_desc(params)} and grads {array_desc(grads)}; "
                "expected two 1-D float arrays of one shape and dtype, params writable")

    def _allocate(self, params: np.ndarray) -> None:
        """State buffers and scratch shaped like params (keeping loaded state, in its dtype)."""
        size = self._known_size()
        if size is not None and size != params.size:
            raise ValueError(f"{self.name}.step: params has {params.size} elements, but this "
                             f"rule's state is for {size}")
        for key in self.buffers:
            old = self.state.get(key)
            self.state[key] = (np.zeros_like(params) if old is None
                               else np.ascontiguousarray(old, dtype=params.dtype))
        self._tmp = np.empty_like(params)

    def _known_size(self) -> int | None:
        """P as far as it is known yet: from the buffers, else the constructor, else None."""
        if self._tmp is not None:
            return self._tmp.size
        if self.state:
            return next(iter(self.state.values())).size
        return self._size

    # -- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{"t": int, <buffer>: (P,) array copy, ...}. A rule that never stepped has only "t"."""
        return {"t": self.t, **{k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Continue from `d` (from `state_dict`, possibly via HDF5). Raises ValueError naming the
        key, its value and the expectation; on error nothing has changed."""
        where = f"{self.name}.load_state_dict"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: state {type(d).__name__}, expected a dict")
        known_keys(where, d, ("t",) + self.buffers)
        if "t" not in d:
            raise ValueError(f"{where}: missing key 't' (the step counter)")
        t = integer(where, "t", d["t"])
        arrays = self._checked_arrays(where, d, t)
        self.t = t
        if not arrays:  # a rule that never stepped: fresh zeros, whatever was there
            if self._tmp is None:
                self.state = {}
            for buf in self.state.values():
                buf.fill(0)
        for key, arr in arrays.items():
            if key in self.state and self._tmp is not None:
                np.copyto(self.state[key], arr)  # keeps the buffer (and its dtype) in place
            else:
                self.state[key] = np.array(arr, copy=True, order="C")

    def _checked_arrays(self, where: str, d: Mapping[str, Any], t: int) -> dict[str, np.ndarray]:
        present = [k for k in self.buffers if k in d]
        if not present and t == 0:
            return {}
        missing = [k for k in self.buffers if k not in d]
        if missing:
            raise ValueError(f"{where}: missing key {missing[0]!r} (t={t}; only a rule that never "
                             "stepped, t=0, may omit its state arrays)")
        # Buffers in use (or a decay mask) fix P; state loaded but not yet used may be replaced.
        size = self._tmp.size if self._tmp is not None else self._size
        out = {}
        for key in self.buffers:
            arr = d[key]
            if not isinstance(arr, np.ndarray) or arr.ndim != 1 or arr.dtype.kind != "f":
                raise ValueError(f"{where}: {key} is {array_desc(arr)}, expected a 1-D float array")
            if size is not None and arr.size != size:
                raise ValueError(f"{where}: {key} has shape {arr.shape}, expected ({size},)")
            if key in self.nonnegative and bool((arr < 0).any()):
                raise ValueError(f"{where}: {key} has negative entries (min {arr.min()}), "
                                 "expected a sum of squares >= 0")
            out[key] = arr
        shapes = {a.shape for a in out.values()}
        if len(shapes) > 1:
            raise ValueError(f"{where}: state arrays have shapes {sorted(shapes)}, expected one")
        return out


class SGD(UpdateRule):
    """x -= lr g."""

    name = "sgd"

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        tmp = self._scratch
        np.multiply(grads, lr, out=tmp)
        params -= tmp


class Momentum(UpdateRule):
    """v = mu v - lr g; x += v. mu in [0, 1)."""

    name, buffers = "momentum", ("velocity",)
    hparams = (HParam("mu", 0.9, low=0.0, high=1.0, high_open=True),)
    mu: float

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        v, tmp = self.state["velocity"], self._scratch
        v *= params.dtype.type(self.mu)
        np.multiply(grads, lr, out=tmp)
        v -= tmp
        params += v


class Nesterov(Momentum):
    """CS231n form: v_prev = v; v = mu v - lr g; x += -mu v_prev + (1 + mu) v. mu in [0, 1)."""

    name = "nesterov"

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        # Substituting mu v_prev = v + lr g turns the update into x += mu v - lr g: the same
        # step without keeping v_prev, in two fewer passes over memory.
        v, tmp = self.state["velocity"], self._scratch
        mu = params.dtype.type(self.mu)
        np.multiply(grads, lr, out=tmp)
        v *= mu
        v -= tmp
        params -= tmp
        np.multiply(v, mu, out=tmp)
        params += tmp


class AdaGrad(UpdateRule):
    """cache += g^2; x -= lr g / (sqrt(cache) + eps). eps > 0."""

    name, buffers, nonnegative = "adagrad", ("cache",), ("cache",)
    hparams: ClassVar[tuple[HParam, ...]] = (EPS,)
    eps: float

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        cache, tmp = self.state["cache"], self._scratch
        np.multiply(grads, grads, out=tmp)
        cache += tmp
        self._scaled_step(params, grads, lr, cache)

    def _scaled_step(self, params: np.ndarray, grads: np.ndarray, lr: np.floating,
                     cache: np.ndarray) -> None:
        """x -= lr g / (sqrt(cache) + eps), through the scratch buffer."""
        tmp = self._scratch
        np.sqrt(cache, out=tmp)
        tmp += params.dtype.type(self.eps)
        np.divide(grads, tmp, out=tmp)
        tmp *= lr
        params -= tmp


class RMSProp(AdaGrad):
    """cache = d cache + (1 - d) g^2; x -= lr g / (sqrt(cache) + eps). d in [0, 1), eps > 0."""

    name = "rmsprop"
    hparams = (HParam("decay_rate", 0.99, low=0.0, high=1.0, high_open=True), EPS)
    decay_rate: float

    def _update(self, params: np.ndarray, grads: np.ndarray, lr: np.floating) -> None:
        f = params.dtype.type
        cache, tmp = self.state["cache"], self._scratch
        cache *= f(self.decay_rate)
        np.multiply(grads, grads, out=tmp)
        tmp *= f(1.0 - self.decay_rate)
        cache += tmp
        self._scaled_step(params, grads, lr, cache)
