"""Update rules over flat parameter/gradient buffers, in place and allocation-free per step.

Each rule: `step(params, grads, lr)` with params, grads: (P,) contiguous float arrays;
`state_dict()` -> plain arrays and numbers (stored in HDF5); `load_state_dict(d)` validates.
Rules never see the world size: gradient averaging happens before them.
"""

from __future__ import annotations

import numpy as np


def _check_range(rule: str, name: str, value, low: float, high: float | None = None,
                 low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value > low if low_open else value >= low) and (high is None or value < high)
    if not ok:
        bound = f"{'>' if low_open else '>='} {low}" + (f" and < {high}" if high is not None else "")
        raise ValueError(f"{rule}: {name}={value!r}, expected a number {bound}")
    return float(value)


class Rule:
    """Base: named state buffers allocated on first step (sized like params)."""

    name = "sgd"
    buffers: tuple[str, ...] = ()

    def __init__(self):
        self.state: dict[str, np.ndarray] = {}
        self.t = 0
        self._tmp = None

    def _ensure(self, params: np.ndarray) -> None:
        if not self.state and self.buffers:
            self.state = {b: np.zeros_like(params) for b in self.buffers}
        if self._tmp is None or self._tmp.shape != params.shape:
            self._tmp = np.empty_like(params)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        self._ensure(params)
        self.t += 1
        self._update(params, grads, params.dtype.type(lr))

    def _update(self, params, grads, lr) -> None:
        np.multiply(grads, lr, out=self._tmp)
        params -= self._tmp

    def state_dict(self) -> dict:
        return {"t": self.t, **{k: v.copy() for k, v in self.state.items()}}

    def load_state_dict(self, d: dict) -> None:
        missing = [k for k in ("t",) + self.buffers if k not in d]
        if missing:
            raise ValueError(f"{self.name}: state is missing {missing}; expected {('t',) + self.buffers}")
        arrays = {k: np.asarray(d[k]) for k in self.buffers}
        shapes = {v.shape for v in arrays.values()}
        if len(shapes) > 1:
            raise ValueError(f"{self.name}: state buffers have different shapes {shapes}")
        if self.state:
            for k, v in arrays.items():
                if v.shape != self.state[k].shape:
                    raise ValueError(f"{self.name}: state {k} has shape {v.shape}, "
                                     f"expected {self.state[k].shape}")
        self.state = {k: v.copy() for k, v in arrays.items()}
        self.t = int(d["t"])


class SGD(Rule):
    name = "sgd"


class Momentum(Rule):
    """v = mu v - lr g; x += v."""

    name, buffers = "momentum", ("velocity",)

    def __init__(self, mu: float = 0.9):
        super().__init__()
        self.mu = _check_range(self.name, "mu", mu, 0.0, 1.0)

    def _update(self, params, grads, lr):
        v = self.state["velocity"]
        v *= v.dtype.type(self.mu)
        np.multiply(grads, lr, out=self._tmp)
        v -= self._tmp
        params += v


class Nesterov(Momentum):
    """v_prev = v; v = mu v - lr g; x += -mu v_prev + (1 + mu) v."""

    name = "nesterov"

    def _update(self, params, grads, lr):
        v, tmp = self.state["velocity"], self._tmp
        mu = v.dtype.type(self.mu)
        np.multiply(v, -mu, out=tmp)  # -mu v_prev
        params += tmp
        v *= mu
        np.multiply(grads, lr, out=tmp)
        v -= tmp
        np.multiply(v, 1 + mu, out=tmp)
        params += tmp


class AdaGrad(Rule):
    """cache += g^2; x -= lr g / (sqrt(cache) + eps)."""

    name, buffers = "adagrad", ("cache",)

    def __init__(self, eps: float = 1e-8):
        super().__init__()
        self.eps = _check_range(self.name, "eps", eps, 0.0, low_open=True)

    def _scaled_step(self, params, grads, lr, cache):
        tmp = self._tmp
        np.sqrt(cache, out=tmp)
        tmp += tmp.dtype.type(self.eps)
        np.divide(grads, tmp, out=tmp)
        tmp *= lr
        params -= tmp

    def _update(self, params, grads, lr):
        cache = self.state["cache"]
        np.multiply(grads, grads, out=self._tmp)
        cache += self._tmp
        self._scaled_step(params, grads, lr, cache)


class RMSProp(AdaGrad):
    """cache = d cache + (1 - d) g^2; x -= lr g / (sqrt(cache) + eps)."""

    name = "rmsprop"

    def __init__(self, decay_rate: float = 0.99, eps: float = 1e-8):
        super().__init__(eps)
        self.decay_rate = _check_range(self.name, "decay_rate", decay_rate, 0.0, 1.0)

    def _update(self, params, grads, lr):
        cache, d = self.state["cache"], self.state["cache"].dtype.type(self.decay_rate)
        cache *= d
        np.multiply(grads, grads, out=self._tmp)
        self._tmp *= 1 - d
        cache += self._tmp
        self._scaled_step(params, grads, lr, cache)


class Adam(Rule):
    """Bias-corrected Adam (Kingma & Ba): m, v moments; x -= lr m_hat / (sqrt(v_hat) + eps)."""

    name, buffers = "adam", ("m", "v")

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        super().__init__()
        self.beta1 = _check_range(self.name, "beta1", beta1, 0.0, 1.0)
        self.beta2 = _check_range(self.name, "beta2", beta2, 0.0, 1.0)
        self.eps = _check_range(self.name, "eps", eps, 0.0, low_open=True)

    def _update(self, params, grads, lr):
        m, v, tmp = self.state["m"], self.state["v"], self._tmp
        f = m.dtype.type
        b1, b2 = f(self.beta1), f(self.beta2)
        m *= b1
        np.multiply(grads, 1 - b1, out=tmp)
        m += tmp
        v *= b2
        np.multiply(grads, grads, out=tmp)
        tmp *= 1 - b2
        v += tmp
        # Fold both bias corrections into the step size and epsilon (no extra buffers).
        c1, c2 = 1.0 - self.beta1 ** self.t, 1.0 - self.beta2 ** self.t
        np.sqrt(v, out=tmp)
        tmp += f(self.eps * np.sqrt(c2))
        np.divide(m, tmp, out=tmp)
        tmp *= f(lr * np.sqrt(c2) / c1)
        params -= tmp


class AdamW(Adam):
    """Adam with decoupled weight decay: x -= lr wd x (only where decay_mask is 1), then Adam."""

    name = "adamw"

    def __init__(self, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 wd: float = 0.01, decay_mask: np.ndarray | None = None):
        super().__init__(beta1, beta2, eps)
        self.wd = _check_range(self.name, "wd", wd, 0.0)
        self.decay_mask = decay_mask

    def _update(self, params, grads, lr):
        if self.wd:
            np.multiply(params, lr * self.wd, out=self._tmp)
            if self.decay_mask is not None:
                self._tmp *= self.decay_mask
            params -= self._tmp
        super()._update(params, grads, lr)


RULES = {cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSProp, Adam, AdamW)}


def make_optimizer(name: str, **hparams) -> Rule:
    """An update rule by name; unknown names and hyperparameters are errors naming them."""
    cls = RULES.get(name)
    if cls is None:
        raise ValueError(f"optimizer {name!r} is unknown; expected one of {', '.join(RULES)}")
    try:
        return cls(**hparams)
    except TypeError:
        import inspect

        allowed = sorted(set(inspect.signature(cls.__init__).parameters) - {"self"})
        raise ValueError(f"optimizer {name}: hyperparameters {sorted(hparams)}, expected some "
                         f"of {allowed}") from None
