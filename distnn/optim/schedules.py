"""Learning-rate schedules: pure functions lr(step, epoch, metrics=None) of where training is.

`epoch` may be fractional (step / steps_per_epoch) for per-step schedules. ReduceOnPlateau is
the one stateful schedule: `update(metric)` once per validation, `state_dict()` for checkpoints.
"""

from __future__ import annotations

import math


def _positive(where: str, key: str, value, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"{where}: {key}={value!r}, expected a number {'>=' if allow_zero else '>'} 0")
    return float(value)


class Constant:
    def __init__(self, base_lr: float):
        self.base_lr = _positive("constant schedule", "base_lr", base_lr)

    def lr(self, step: int, epoch: float, metrics=None) -> float:
        return self.base_lr


class StepDecay(Constant):
    """base * drop ** floor(epoch / every)."""

    def __init__(self, base_lr: float, drop: float = 0.5, every: float = 10):
        super().__init__(base_lr)
        self.drop, self.every = _positive("step schedule", "drop", drop), _positive("step schedule", "every", every)

    def lr(self, step, epoch, metrics=None):
        return self.base_lr * self.drop ** math.floor(epoch / self.every + 1e-9)


class Exponential(Constant):
    """base * gamma ** epoch."""

    def __init__(self, base_lr: float, gamma: float = 0.95):
        super().__init__(base_lr)
        self.gamma = _positive("exponential schedule", "gamma", gamma)

    def lr(self, step, epoch, metrics=None):
        return self.base_lr * self.gamma ** epoch


class InverseTime(Constant):
    """alpha0 / (1 + k t), t in epochs."""

    def __init__(self, base_lr: float, k: float = 0.1):
        super().__init__(base_lr)
        self.k = _positive("inverse_time schedule", "k", k, allow_zero=True)

    def lr(self, step, epoch, metrics=None):
        return self.base_lr / (1.0 + self.k * epoch)


class Cosine(Constant):
    """min_lr + (base - min_lr) (1 + cos(pi * epoch / total)) / 2, then min_lr after total."""

    def __init__(self, base_lr: float, total_epochs: float, min_lr: float = 0.0):
        super().__init__(base_lr)
        self.total = _positive("cosine schedule", "total_epochs", total_epochs)
        self.min_lr = _positive("cosine schedule", "min_lr", min_lr, allow_zero=True)

    def lr(self, step, epoch, metrics=None):
        frac = min(max(epoch / self.total, 0.0), 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


class ReduceOnPlateau(Constant):
    """Multiply the rate by `factor` after `patience` validations without improvement
    (by more than min_delta, in `mode`), then wait `cooldown` validations; never below min_lr.
    """

    def __init__(self, base_lr: float, factor: float = 0.1, patience: int = 5, mode: str = "min",
                 min_delta: float = 0.0, cooldown: int = 0, min_lr: float = 0.0):
        super().__init__(base_lr)
        if mode not in ("min", "max"):
            raise ValueError(f"plateau schedule: mode={mode!r}, expected 'min' or 'max'")
        if not 0 < factor < 1:
            raise ValueError(f"plateau schedule: factor={factor!r}, expected a number in (0, 1)")
        self.factor, self.patience, self.mode = float(factor), int(patience), mode
        self.min_delta, self.cooldown, self.min_lr = float(min_delta), int(cooldown), float(min_lr)
        self.current, self.best, self.bad, self.cooling = self.base_lr, None, 0, 0

    def update(self, value: float) -> None:
        better = self.best is None or (value < self.best - self.min_delta if self.mode == "min"
                                       else value > self.best + self.min_delta)
        if better:
            self.best, self.bad = float(value), 0
        else:
            self.bad += 1
        if self.cooling > 0:
            self.cooling -= 1
            self.bad = 0
        elif self.bad > self.patience:
            self.current = max(self.current * self.factor, self.min_lr)
            self.cooling, self.bad = self.cooldown, 0

    def lr(self, step, epoch, metrics=None):
        return self.current

    def state_dict(self) -> dict:
        return {"current": self.current, "best": self.best, "bad": self.bad, "cooling": self.cooling}

    def load_state_dict(self, d: dict) -> None:
        self.current, self.best = float(d["current"]), d["best"]
        self.bad, self.cooling = int(d["bad"]), int(d["cooling"])


class LinearWarmup:
    """Ramp linearly from start_factor * inner(0) at epoch 0 to inner's own value at
    warmup_epochs; after that, exactly inner. Composes with any schedule (Goyal et al. 2017).
    """

    def __init__(self, inner, warmup_epochs: float, start_factor: float = 0.1):
        self.inner = inner
        self.warmup = _positive("warmup", "warmup_epochs", warmup_epochs)
        self.start_factor = _positive("warmup", "start_factor", start_factor, allow_zero=True)

    def lr(self, step, epoch, metrics=None):
        target = self.inner.lr(step, epoch, metrics)
        if epoch >= self.warmup:
            return target
        frac = epoch / self.warmup
        return target * (self.start_factor + (1 - self.start_factor) * frac)

    def update(self, value):
        if hasattr(self.inner, "update"):
            self.inner.update(value)

    def state_dict(self):
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, d):
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(d)


SCHEDULES = {"constant": Constant, "step": StepDecay, "exponential": Exponential,
             "inverse_time": InverseTime, "cosine": Cosine, "plateau": ReduceOnPlateau}


def make_schedule(spec: dict):
    """From {"name": ..., "base_lr": ..., <schedule keys>, "warmup_epochs": w,
    "warmup_start_factor": f}; errors name the bad key.
    """
    spec = dict(spec)
    name = spec.pop("name", "constant")
    cls = SCHEDULES.get(name)
    if cls is None:
        raise ValueError(f"schedule {name!r} is unknown; expected one of {', '.join(SCHEDULES)}")
    warmup = spec.pop("warmup_epochs", 0.0)
    start = spec.pop("warmup_start_factor", 0.1)
    try:
        sched = cls(**spec)
    except TypeError as exc:
        raise ValueError(f"schedule {name}: {exc}") from None
    return LinearWarmup(sched, warmup, start) if warmup else sched


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """The linear scaling rule (Goyal et al. 2017): lr grows with the global batch."""
    return base_lr * global_batch / reference_batch
