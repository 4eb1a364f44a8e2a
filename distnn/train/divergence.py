"""Divergence: when the loss says training has blown up, and what then (train.on_divergence).

`stop` (the default) ends the run with TrainingDiverged (exit 3). `rollback` goes back to the
newest good checkpoint (the run's starting state if none was written) with the learning rate
times train.rollback_lr_factor, up to train.max_rollbacks times; the scale and the count live in
the RunState, so a checkpoint (and a resume) keeps them. Every decision is taken from reduced
losses, so every rank takes the same branch.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from distnn import console
from distnn.config import TrainConfig
from distnn.train.errors import TrainingDiverged
from distnn.train.state import RunState


class DivergenceGuard:
    def __init__(self, cfg: TrainConfig, keeper, metrics, is_root: bool):
        self.cfg, self.keeper, self.metrics, self.is_root = cfg, keeper, metrics, is_root

    def diverged(self, state: RunState, loss: float) -> bool:
        """NaN/inf, or above train.divergence_factor x the run's first loss."""
        if not math.isfinite(loss):
            return True
        return state.initial_loss is not None and \
            loss > self.cfg.divergence_factor * state.initial_loss

    def stop_unless_rolling_back(self, state: RunState, what: str, lr: float) -> None:
        """Raise TrainingDiverged unless the config asks for a rollback and one is left; the
        message names the last good checkpoint, or says that none was written."""
        t = self.cfg
        if t.on_divergence == "rollback" and state.rollbacks < t.max_rollbacks:
            return
        gave_up = f" ({state.rollbacks} rollback(s) did not help)" if state.rollbacks else ""
        where = self.keeper.describe_last() or \
            "no checkpoint was written (none had passed the divergence check)"
        initial = f"{state.initial_loss:.4g}" if state.initial_loss is not None else "unknown"
        raise TrainingDiverged(
            f"{what} (initial {initial}, limit {t.divergence_factor:g}x) at lr {lr:.4g}; lower "
            f"the learning rate{gave_up}. {where[0].upper()}{where[1:]}")

    def rolled_back(self, old: RunState, new: RunState, what: str, lr: float,
                    lr_now: Callable[[], float], loss: float, accuracy: float) -> None:
        """Count the rollback in `new` (the restored state), scale its learning rate, and log
        it: a metrics.jsonl line (split "rollback") and one line on rank 0's stderr."""
        new.rollbacks = old.rollbacks + 1
        new.lr_scale = old.lr_scale * self.cfg.rollback_lr_factor
        self.metrics.write(epoch=old.epoch, step=old.step, split="rollback", loss=loss,
                           accuracy=accuracy, lr=lr_now(),
                           images_per_s=old.epoch_count / max(old.epoch_seconds, 1e-9),
                           rollback=new.rollbacks, to_step=new.step, lr_scale=new.lr_scale,
                           diverged_lr=lr)
        if self.is_root:
            console.err(f"distnn train: {what} at lr {lr:.4g} diverged: "
                        f"rollback {new.rollbacks} of "
                        f"{self.cfg.max_rollbacks} to step {new.step}, learning rate scaled by "
                        f"{new.lr_scale:g}")
