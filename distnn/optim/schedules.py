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
from typing import Any, ClassVar, Protocol

from distnn.optim._check import integer, number
from distnn.optim.hparams import Declared, HParam

MIN_LR = HParam("min_lr", 0.0, low=0.0)  # and <= base_lr, which the schedule checks
# make_schedule's keys for the LinearWarmup around any schedule (warmup_epochs 0: none).
WARMUP = (HParam("warmup_epochs", 0.0, low=0.0),
          HParam("warmup_start_factor", 0.1, low=0.0, high=1.0))


class Schedule(Declared):
    """Base class: a stateless schedule starting at base_lr > 0. `hparams` declares the
    keyword arguments (= make_schedule's config keys) with defaults and ranges."""

    name = "schedule"
    hparams: ClassVar[tuple[HParam, ...]] = (HParam("base_lr", 0.05, low=0.0, low_open=True),)
    base_lr: float

    def __init__(self, **hparams: Any) -> None:
        self._set_hparams(hparams)

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        raise NotImplementedError

    def update(self, value: float) -> None:
        """Called once per validation with the monitored metric; stateless schedules ignore it."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        if not isinstance(d, Mapping) or d:
            raise ValueError(f"{self.name}.load_state_dict: state {d!r}, expected {{}} "
                             "(this schedule keeps no state)")

    def _epoch(self, epoch: float) -> float:
        """epoch >= 0; checked because a negative one would silently raise the rate."""
        return number(f"{self.name}.lr", "epoch", epoch, low=0.0)

    def _min_lr_at_most_base(self, min_lr: float) -> float:
        return number(self.name, "min_lr", min_lr, low=0.0, high=self.base_lr)


class Constant(Schedule):
    """lr = base_lr."""

    name = "constant"

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        return self.base_lr


class StepDecay(Schedule):
    """lr = base_lr * drop ** floor(epoch / every): `drop` once every `every` epochs.
    drop in (0, 1], every > 0 (epochs, may be fractional)."""

    name = "step"
    hparams = Schedule.hparams + (HParam("drop", 0.5, low=0.0, high=1.0, low_open=True),
                                  HParam("every", 10.0, low=0.0, low_open=True))
    drop: float
    every: float

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        # The tiny nudge keeps 0.3 / 0.1 = 2.9999999999999996 on the boundary it stands for.
        drops = math.floor(self._epoch(epoch) / self.every + 1e-9)
        return self.base_lr * self.drop ** drops


class Exponential(Schedule):
    """lr = base_lr * gamma ** epoch (continuous in a fractional epoch). gamma in (0, 1]."""

    name = "exponential"
    hparams = Schedule.hparams + (HParam("gamma", 0.95, low=0.0, high=1.0, low_open=True),)
    gamma: float

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        return self.base_lr * self.gamma ** self._epoch(epoch)


class InverseTime(Schedule):
    """lr = base_lr / (1 + k * t) with t = epoch (fractional allowed), so at epoch 1/k the rate
    has halved. k >= 0 (0: constant)."""

    name = "inverse_time"
    hparams = Schedule.hparams + (HParam("k", 0.1, low=0.0),)
    k: float

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        return self.base_lr / (1.0 + self.k * self._epoch(epoch))


class Cosine(Schedule):
    """lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * epoch / total_epochs)) / 2 for
    epoch <= total_epochs, then min_lr. total_epochs > 0 (no default; distnn.config gives
    train.epochs), 0 <= min_lr <= base_lr."""

    name = "cosine"
    hparams = Schedule.hparams + (HParam("total_epochs", low=0.0, low_open=True), MIN_LR)
    total_epochs: float
    min_lr: float

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.min_lr = self._min_lr_at_most_base(self.min_lr)

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        frac = min(self._epoch(epoch) / self.total_epochs, 1.0)
        return self.min_lr + (self.base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * frac))


class Inner(Protocol):
    """What LinearWarmup needs of the schedule it wraps (update/state are optional)."""

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        ...


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

    def __init__(self, inner: Inner, warmup_epochs: float, start_factor: float = 0.1) -> None:
        if not callable(getattr(inner, "lr", None)):
            raise ValueError(f"warmup: inner={inner!r}, expected a schedule with lr(step, epoch)")
        self.inner = inner
        self.warmup = number(self.name, "warmup_epochs", warmup_epochs, low=0.0, low_open=True)
        self.start_factor: float = WARMUP[1].check(self.name, start_factor)

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        epoch = number(f"{self.name}.lr", "epoch", epoch, low=0.0)  # a BadValue, not a TypeError
        target = self.inner.lr(step, epoch, metrics)
        if epoch >= self.warmup:
            return target
        frac = epoch / self.warmup
        return target * (self.start_factor + (1.0 - self.start_factor) * frac)

    # A user's inner schedule may be a bare object with lr() only: then it has no state.
    def update(self, value: float) -> None:
        if hasattr(self.inner, "update"):
            self.inner.update(value)

    def state_dict(self) -> dict[str, Any]:
        return self.inner.state_dict() if hasattr(self.inner, "state_dict") else {}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
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
