"""Learning-rate schedules: `lr(step, epoch, metrics=None) -> float`, pure functions of where
training is. `step` is the global optimizer step (0-based); `epoch` may be fractional,
step / steps_per_epoch, for schedules that move every step. `metrics` is accepted by every
schedule for a uniform call and ignored by these.

Every schedule also has `update(value)`, `state_dict()` and `load_state_dict(d)` so the
coordinator treats them alike; here they are no-ops with empty state. The one stateful schedule,
ReduceOnPlateau, lives in distnn.optim.plateau.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from distnn.optim._check import integer, number


class Schedule:
    """Base class: a stateless schedule starting at base_lr > 0. `hparams` lists the
    constructor keywords (= make_schedule's config keys), `required` those without a default."""

    name = "schedule"
    hparams: tuple[str, ...] = ("base_lr",)
    required: tuple[str, ...] = ("base_lr",)

    def __init__(self, base_lr: float):
        self.base_lr = number(self.name, "base_lr", base_lr, low=0.0, low_open=True)

    def lr(self, step: int, epoch: float, metrics=None) -> float:
        raise NotImplementedError

    def update(self, value: float) -> None:
        """Called once per validation with the monitored metric; stateless schedules ignore it."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: Mapping) -> None:
        if not isinstance(d, Mapping) or d:
            raise ValueError(f"{self.name}.load_state_dict: state {d!r}, expected {{}} "
                             "(this schedule keeps no state)")

    def _epoch(self, epoch) -> float:
        """epoch >= 0; checked because a negative one would silently raise the rate."""
        return number(f"{self.name}.lr", "epoch", epoch, low=0.0)


class Constant(Schedule):
    """lr = base_lr."""

    name = "constant"

    def lr(self, step, epoch, metrics=None):
        return self.base_lr


class StepDecay(Schedule):
    """lr = base_lr * drop ** floor(epoch / every): `drop` once every `every` epochs.
    drop in (0, 1], every > 0 (epochs, may be fractional)."""

    name, hparams = "step", ("base_lr", "drop", "every")

    def __init__(self, base_lr: float, drop: float = 0.5, every: float = 10):
        super().__init__(base_lr)
        self.drop = number(self.name, "drop", drop, low=0.0, high=1.0, low_open=True)
        self.every = number(self.name, "every", every, low=0.0, low_open=True)

    def lr(self, step, epoch, metrics=None):
        # The tiny nudge keeps 0.3 / 0.1 = 2.9999999999999996 on the boundary it stands for.
        drops = math.floor(self._epoch(epoch) / self.every + 1e-9)
        return self.base_lr * self.drop ** drops


class Exponential(Schedule):
    """lr = base_lr * gamma ** epoch (continuous in a fractional epoch). gamma in (0, 1]."""

    name, hparams = "exponential", ("base_lr", "gamma")

    def __init__(self, base_lr: float, gamma: float = 0.95):
        super().__init__(base_lr)
        self.gamma = number(self.name, "gamma", gamma, low=0.0, high=1.0, low_open=True)

    def lr(self, step, epoch, metrics=None):
        return self.base_lr * self.gamma ** self._epoch(epoch)


class InverseTime(Schedule):
    """lr = base_lr / (1 + k * t) with t = epoch (fractional allowed), so at epoch 1/k the rate
    has halved. k >= 0 (0: constant)."""

    name, hparams = "inverse_time", ("base_lr", "k")

    def __init__(self, base_lr: float, k: float = 0.1):
        super().__init__(base_lr)
        self.k = number(self.name, "k", k, low=0.0)

    def lr(self, step, epoch, metrics=None):
        return self.base_lr / (1.0 + self.k * self._epoch(epoch))


class Cosine(Schedule):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2 for
    epoch <= total_epochs, then min_lr. total_epochs > 0, 0 <= min_lr <= base_lr."""

    name, hparams = "cosine", ("base_lr", "total_epochs", "min_lr")
    required = ("base_lr", "total_epochs")

    def __init__(self, base_lr: float, total_epochs: float, min_lr: float = 0.0):
        super().__init__(base_lr)
        self.total = number(self.name, "total_epochs", total_epochs, low=0.0, low_open=True)
        self.min_lr = number(self.name, "min_lr", min_lr, low=0.0, high=self.base_lr)

    def lr(self, step, epoch, metrics=None):
        frac = min(self._epoch(epoch) / self.total, 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


class LinearWarmup:
    """Linear warmup (Goyal et al. 2017) in front of any schedule `inner`:

        lr(step, e) = inner.lr(step, e) * (s + (1 - s) * e / w)   for e < w
        lr(step, e) = inner.lr(step, e)                           for e >= w

    with w = warmup_epochs > 0 and s = start_factor in [0, 1]. The warmup factor rises linearly
    from s at epoch 0 to 1 at epoch w and multiplies inner's value at the same point, so the rate
    starts at s * inner.lr(step, 0) and arrives, continuously, at inner's own value at the end of
    warmup. When inner is constant during warmup (the usual case) this is a straight line; if
    inner moves during warmup, the factor scales inner's curve. update/state go to inner.
    """

    name = "warmup"

    def __init__(self, inner, warmup_epochs: float, start_factor: float = 0.1):
        if not callable(getattr(inner, "lr", None)):
            raise ValueError(f"warmup: inner={inner!r}, expected a schedule with lr(step, epoch)")
        self.inner = inner
        self.warmup = number(self.name, "warmup_epochs", warmup_epochs, low=0.0, low_open=True)
        self.start_factor = number(self.name, "start_factor", start_factor, low=0.0, high=1.0)

    def lr(self, step: int, epoch: float, metrics=None) -> float:
        target = self.inner.lr(step, epoch, metrics)
        if epoch >= self.warmup:
            return target
        frac = number(f"{self.name}.lr", "epoch", epoch, low=0.0) / self.warmup
        return target * (self.start_factor + (1.0 - self.start_factor) * frac)

    # A user's inner schedule may be a bare object with lr() only: then it has no state.
    def update(self, value: float) -> None:
        if hasattr(self.inner, "update"):
            self.inner.update(value)

    def state_dict(self) -> dict:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, d: Mapping) -> None:
        if hasattr(self.inner, "load_state_dict"):
            self.inner.load_state_dict(d)
        elif d:
            raise ValueError(f"warmup.load_state_dict: state {d!r}, expected {{}} (inner "
                             "schedule keeps no state)")


def scaled_lr(base_lr: float, global_batch: int, reference_batch: int = 256) -> float:
    """Linear scaling rule (Goyal et al. 2017): base_lr * global_batch / reference_batch, i.e.
    base_lr is the rate tuned for `reference_batch` images per step; N workers with a larger
    global batch take proportionally larger steps (pair it with a warmup)."""
    base_lr = number("scaled_lr", "base_lr", base_lr, low=0.0, low_open=True)
    global_batch = integer("scaled_lr", "global_batch", global_batch, low=1)
    reference_batch = integer("scaled_lr", "reference_batch", reference_batch, low=1)
    return base_lr * global_batch / reference_batch
