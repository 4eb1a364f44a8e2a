"""ReduceOnPlateau: the one stateful schedule. The coordinator calls `update(value)` once per
validation with a globally reduced metric, so every rank holds the same state and rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from numbers import Real
from typing import Any

from distnn.optim._check import integer, known_keys, number
from distnn.optim.hparams import HParam
from distnn.optim.schedules import MIN_LR, Schedule

_STATE_KEYS = ("current", "best", "has_best", "bad", "cooling")


class ReduceOnPlateau(Schedule):
    """Multiply the rate by `factor` when the monitored metric stops improving.

    A validation improves when it beats the best so far by more than min_delta (lower in mode
    'min', higher in mode 'max'); a non-finite value never improves. After more than `patience`
    consecutive validations without improvement (the (patience+1)-th, as in EarlyStopping and
    PyTorch), current = max(current * factor, min_lr), and the next `cooldown` validations are
    not counted. `lr(...)` returns the current rate whatever step/epoch it is given.
    factor in (0, 1); patience, cooldown: integers >= 0; min_delta >= 0; 0 <= min_lr <= base_lr.
    """

    name = "plateau"
    hparams = Schedule.hparams + (
        HParam("factor", 0.1, low=0.0, high=1.0, low_open=True, high_open=True),
        HParam("patience", 5, integer=True), HParam("mode", "min", choices=("min", "max")),
        HParam("min_delta", 0.0, low=0.0), HParam("cooldown", 0, integer=True), MIN_LR)
    factor: float
    patience: int
    mode: str
    min_delta: float
    cooldown: int
    min_lr: float

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        self.min_lr = self._min_lr_at_most_base(self.min_lr)
        self.current = self.base_lr
        self.best, self.has_best = 0.0, False  # `best` means nothing until has_best
        self.bad = 0  # consecutive counted validations without improvement
        self.cooling = 0  # validations still to ignore after a reduction

    def lr(self, step: int, epoch: float, metrics: Mapping[str, float] | None = None) -> float:
        return self.current

    def improves(self, value: float) -> bool:
        """Would `value` count as an improvement on the best so far?"""
        if not math.isfinite(value):
            return False
        if not self.has_best:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float) -> None:
        """Record one validation's metric (a plain number, the same on every rank)."""
        if isinstance(value, bool) or not isinstance(value, Real):
            raise ValueError(f"{self.name}.update: value={value!r}, expected a number")
        value = float(value)
        if self.improves(value):
            self.best, self.has_best, self.bad = value, True, 0
        else:
            self.bad += 1
        if self.cooling > 0:
            self.cooling -= 1
            self.bad = 0
        elif self.bad > self.patience:
            self.current = max(self.current * self.factor, self.min_lr)
            self.cooling, self.bad = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        """Plain numbers only (JSON/HDF5-safe): no None, no inf."""
        return {"current": self.current, "best": self.best, "has_best": int(self.has_best),
                "bad": self.bad, "cooling": self.cooling}

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        """Continue from `d`; ValueError naming the bad key, nothing changed on error."""
        where = f"{self.name}.load_state_dict"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: state {type(d).__name__}, expected a dict")
        known_keys(where, d, _STATE_KEYS)
        missing = [k for k in _STATE_KEYS if k not in d]
        if missing:
            raise ValueError(f"{where}: missing key {missing[0]!r}; expected "
                             f"{', '.join(_STATE_KEYS)}")
        current = number(where, "current", d["current"], low=0.0, low_open=True)
        best = number(where, "best", d["best"])
        has_best = integer(where, "has_best", d["has_best"])
        if has_best > 1:
            raise ValueError(f"{where}: has_best={has_best!r}, expected 0 or 1")
        bad = integer(where, "bad", d["bad"])
        cooling = integer(where, "cooling", d["cooling"])
        self.current, self.best, self.has_best = current, best, bool(has_best)
        self.bad, self.cooling = bad, cooling
