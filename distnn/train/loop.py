"""The coordinator: the SPMD epoch loop run identically on every rank.

Every decision (stop on signal, early stop, divergence, best checkpoint, plateau) is taken from
globally reduced numbers, so all ranks take the same branch at the same step. Rank 0 alone writes
files.
"""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path

import numpy as np
import yaml

from distnn.config import Config, to_dict
from distnn.data import BatchIterator, RandomCropFlip
from distnn.exit_codes import ExitCode
from distnn.train import checkpoint as ckpt
from distnn.train.errors import TrainingDiverged
from distnn.train.evaluate import evaluate
from distnn.train.metrics import progress
from distnn.train.state import RunState
from distnn.train.step import DataParallelStep, check_replicas

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class SignalFlag:
    """Remembers that SIGTERM/SIGUSR1 arrived; the flag travels in the next step's allreduce."""

    def __init__(self):
        self.raised, self._old = False, {}

    def __enter__(self):
        for sig in STOP_SIGNALS:
            self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.raised = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


class Coordinator:
    """Owns the loop; `run()` returns an exit code (0 done, 3 diverged, 75 resumable stop)."""

    def __init__(self, cfg: Config, comm, parts, run_dir: Path, metrics):
        self.cfg, self.comm, self.run_dir, self.metrics = cfg, comm, Path(run_dir), metrics
        self.splits, self.model, self.optimizer, self.schedule = (
            parts.splits, parts.model, parts.optimizer, parts.schedule)
        self.normalization, self.sampler = parts.normalization, parts.sampler
        self.state = RunState()
        es = cfg.early_stopping
        self.state.early.mode, self.state.early.patience = es.mode, es.patience
        self.state.early.min_delta = es.min_delta
        self.best_params: tuple[np.ndarray, np.ndarray] | None = None
        t = cfg.train
        self.step_fn = DataParallelStep(self.model, self.optimizer, comm, t.loss, t.l2,
                                        t.grad_accum)
        self.is_root = comm.rank == 0
        self.last_update_ratio = self.last_grad_norm = float("nan")
        self._before = np.empty_like(self.model.params)  # for the update ratio, reused

    # -- schedule -------------------------------------------------------------------------------
    def lr(self) -> float:
        s = self.state
        frac = s.step_in_epoch / max(self.sampler.steps_per_epoch, 1)
        epoch = s.epoch + (frac if self.cfg.schedule.per == "step" else 0.0)
        return float(self.schedule.lr(s.step, epoch))

    def global_count(self, step_in_epoch: int) -> int:
        """Samples in the global batch of this step (the last one of an epoch may be partial)."""
        n, b = len(self.splits.train), self.cfg.train.global_batch
        return min(b, n - step_in_epoch * b)

    # -- one epoch ------------------------------------------------------------------------------
    def run_epoch(self, flag: SignalFlag) -> int | None:
        """Train the rest of the current epoch; an exit code if training must end now."""
        s, cfg = self.state, self.cfg
        self.sampler.set_epoch(s.epoch)
        steps = self.sampler.steps_per_epoch
        it = BatchIterator(self.splits.train, self.sampler, normalization=self.normalization,
                           augment=self.augment(), prefetch=cfg.data.prefetch,
                           start_step=s.step_in_epoch)
        bar = progress(steps, s.step_in_epoch, s.epoch, self.is_root)
        try:
            tick = time.perf_counter()
            for x, y in it:
                code = self.train_step(x, y, flag)
                # Wall time per step, waiting for input included: the honest images/s.
                now = time.perf_counter()
                s.epoch_seconds += now - tick
                tick = now
                bar.update(1)
                if not bar.disable:
                    bar.set_postfix(loss=f"{s.epoch_loss / max(s.step_in_epoch, 1):.4f}",
                                    acc=f"{s.epoch_correct / max(s.epoch_count, 1):.3f}",
                                    lr=f"{self.lr():.3g}",
                                    img_s=f"{s.epoch_count / max(s.epoch_seconds, 1e-9):.0f}")
                if code is not None:
                    return code
        finally:
            bar.close()
            it.close()
        return None

    def augment(self):
        if not self.cfg.data.augment:
            return None
        return RandomCropFlip(pad=4, flip=True)

    def train_step(self, x, y, flag: SignalFlag) -> int | None:
        s, t = self.state, self.cfg.train
        self.model.reseed(self.cfg.seed, s.step, self.comm.rank)
        want_ratio = s.step % 50 == 0
        if want_ratio:
            np.copyto(self._before, self.model.params)
        lr = self.lr()
        res = self.step_fn(x, y, self.global_count(s.step_in_epoch), lr, flag.raised)
        if want_ratio:
            self.record_ratio(self._before)
        if s.initial_loss is None:
            s.initial_loss = res.loss
        if not math.isfinite(res.loss) or res.loss > t.divergence_factor * s.initial_loss:
            raise TrainingDiverged(
                f"step {s.step}: loss {res.loss:.4g} (initial {s.initial_loss:.4g}, limit "
                f"{t.divergence_factor:g}x) at lr {lr:.4g}; lower the learning rate. "
                f"The last good checkpoint is kept in {self.run_dir / 'checkpoints'}"
            )
        s.step += 1
        s.step_in_epoch += 1
        s.epoch_loss += res.loss
        s.epoch_correct += res.correct
        s.epoch_count += res.count
        if t.consistency_every and s.step % t.consistency_every == 0:
            check_replicas(self.model, self.comm, s.step)
        if res.stop:
            self.save("last")
            return ExitCode.RESUMABLE
        if t.max_steps and s.step >= t.max_steps:
            return ExitCode.OK
        if t.eval_every_steps and s.step % t.eval_every_steps == 0 \
                and s.step_in_epoch < self.sampler.steps_per_epoch:
            self.validate(lr)  # logged only: early stopping and plateau decide per epoch
        every = self.cfg.checkpoint.every_steps
        if every and s.step % every == 0 and s.step_in_epoch < self.sampler.steps_per_epoch:
            self.save("last")
        return None

    def record_ratio(self, before: np.ndarray) -> None:
        """The material's health numbers: ||update|| / ||weights|| (~1e-3) and ||gradient||."""
        before -= self.model.params
        norm_w = float(np.linalg.norm(self.model.params))
        self.last_update_ratio = float(np.linalg.norm(before)) / max(norm_w, 1e-30)
        self.last_grad_norm = float(np.linalg.norm(self.model.grads))

    # -- end of epoch ---------------------------------------------------------------------------
    def sync_state(self) -> None:
        """Average the non-trained state (BatchNorm running statistics) so every replica and
        the checkpoint hold the same values. Collective: all ranks must call."""
        if self.model.state.size and self.comm.size > 1:
            self.comm.allreduce_(self.model.state)
            self.model.state /= self.comm.size

    def validate(self, lr: float) -> dict:
        """Score the validation split and log it. Collective: all ranks must call."""
        s, t0 = self.state, time.perf_counter()
        val = evaluate(self.model, self.splits.val, self.comm, self.normalization,
                       self.cfg.train.loss)
        self.metrics.write(epoch=s.epoch, step=s.step, split="val", loss=val["loss"],
                           accuracy=val["accuracy"], lr=lr, n=val["n"],
                           images_per_s=val["n"] / max(time.perf_counter() - t0, 1e-9))
        return val

    def end_epoch(self) -> bool:
        """Log, validate, update early stopping / plateau / best-k, checkpoint. True: stop."""
        s, cfg = self.state, self.cfg
        self.sync_state()
        lr = self.lr()
        self.metrics.write(epoch=s.epoch, step=s.step, split="train",
                           loss=s.epoch_loss / max(s.step_in_epoch, 1),
                           accuracy=s.epoch_correct / max(s.epoch_count, 1), lr=lr,
                           images_per_s=s.epoch_count / max(s.epoch_seconds, 1e-9),
                           grad_norm=self.last_grad_norm, update_ratio=self.last_update_ratio)
        val = self.validate(lr)
        value = val["loss"] if cfg.early_stopping.monitor == "val_loss" else val["accuracy"]
        if hasattr(self.schedule, "update"):
            self.schedule.update(value)
        improved = s.early.update(value, s.epoch)
        if improved:
            self.best_params = (self.model.params.copy(), self.model.state.copy())
        finished_epoch = s.epoch
        s.epoch += 1
        s.step_in_epoch = 0
        s.epoch_loss = s.epoch_seconds = 0.0
        s.epoch_correct = s.epoch_count = 0
        if improved:
            self.save("best")
        every = cfg.checkpoint.every_epochs
        if every and (finished_epoch + 1) % every == 0:
            self.save("last")
        return cfg.early_stopping.enabled and s.early.exhausted

    # -- checkpoints ----------------------------------------------------------------------------
    def snapshot(self) -> ckpt.Snapshot:
        s = self.state
        if hasattr(self.schedule, "state_dict"):
            s.schedule = self.schedule.state_dict()
        return ckpt.Snapshot(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            normalization=self.normalization, step=s.step, epoch=s.epoch,
            step_in_epoch=s.step_in_epoch, config_yaml=yaml.safe_dump(to_dict(self.cfg)),
            model_spec=list(self.cfg.model), coordinator=s.to_json())

    def save(self, kind: str) -> None:
        """Rank 0 writes checkpoints/<kind>.h5 atomically. 'best' also keeps the best k."""
        if not self.is_root:
            return
        folder = self.run_dir / "checkpoints"
        snap = self.snapshot()
        if kind == "best":
            self.rotate_best(folder)
        ckpt.save_checkpoint(snap, folder / f"{kind}.h5")

    def rotate_best(self, folder: Path) -> None:
        """best.h5 is the newest best; best-2.h5 .. best-k.h5 the k-1 bests before it."""
        k = self.cfg.checkpoint.keep_best
        for i in range(k - 1, 0, -1):
            src = folder / ("best.h5" if i == 1 else f"best-{i}.h5")
            if src.exists():
                src.replace(folder / f"best-{i + 1}.h5")

    def restore(self, snap: ckpt.Snapshot, best: ckpt.Snapshot | None) -> None:
        """Continue from a snapshot (already broadcast from rank 0)."""
        self.model.load_state_dict(snap.model)
        self.optimizer.load_state_dict(snap.optimizer)
        self.state = RunState.from_json(snap.coordinator)
        if self.state.schedule and hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(self.state.schedule)
        if best is not None:
            keep = self.model.state_dict()
            self.model.load_state_dict(best.model)
            self.best_params = (self.model.params.copy(), self.model.state.copy())
            self.model.load_state_dict(keep)

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> int:
        """Train until epochs/max_steps, early stop, divergence or a stop signal."""
        cfg, s = self.cfg, self.state
        with SignalFlag() as flag:
            while s.epoch < cfg.train.epochs:
                code = self.run_epoch(flag)
                if code == ExitCode.RESUMABLE:
                    return code
                stop = self.end_epoch() if code is None or s.step_in_epoch else False
                s = self.state
                if code is not None or stop:
                    break
        if cfg.early_stopping.enabled and self.best_params is not None:
            # Restore the best weights whether or not patience ran out.
            self.model.params[...] = self.best_params[0]
            self.model.state[...] = self.best_params[1]
        return ExitCode.OK
