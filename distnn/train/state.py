"""Coordinator state that must survive a restart: early stopping, best-k ranking, epoch sums,
rollbacks.

Kept as plain numbers so it serialises to JSON inside a checkpoint.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field


@dataclass
class EarlyStopping:
    """Patience on a monitored validation metric. Identical on every rank because it only ever
    sees globally reduced numbers.
    """

    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0
    best: float | None = None
    best_epoch: int = -1
    bad_epochs: int = 0

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, value: float, epoch: int) -> bool:
        """Record one validation; True when this epoch is the new best."""
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            return True
        self.bad_epochs += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.bad_epochs > self.patience


@dataclass
class RunState:
    """Where training is, and what it has seen."""

    step: int = 0
    epoch: int = 0
    step_in_epoch: int = 0
    initial_loss: float | None = None
    # Running sums over the current epoch's steps, so a mid-epoch resume logs the same line.
    epoch_loss: float = 0.0  # the sum of the per-sample losses (loss x samples per step)
    epoch_correct: int = 0
    epoch_count: int = 0
    epoch_seconds: float = 0.0
    early: EarlyStopping = field(default_factory=EarlyStopping)
    best_k: list = field(default_factory=list)  # [[metric, epoch], ...] best first
    schedule: dict = field(default_factory=dict)
    # train.on_divergence: rollback. The learning rate is the schedule's times lr_scale, which
    # every rollback multiplies by train.rollback_lr_factor; both survive a resume.
    lr_scale: float = 1.0
    rollbacks: int = 0

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> RunState:
        data = dict(data)
        data["early"] = EarlyStopping(**data.get("early", {}))
        return cls(**data)
