"""The coordinator: the SPMD epoch loop run identically on every rank.

Every decision (stop on signal, early stop, divergence, best checkpoint, plateau) is taken from
globally reduced numbers, so all ranks take the same branch at the same step. Rank 0 alone writes
files.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from distnn import console
from distnn.config import Config
from distnn.data import BatchIterator, RandomCropFlip
from distnn.exit_codes import ExitCode
from distnn.train import checkpoint as ckpt
from distnn.train.divergence import DivergenceGuard
from distnn.train.errors import CheckpointError
from distnn.train.evaluate import evaluate
from distnn.train.invariant import InvariantStep
from distnn.train.keeper import CheckpointKeeper
from distnn.train.metrics import progress
from distnn.train.signals import StopRequest
from distnn.train.state import RunState
from distnn.train.step import DataParallelStep, check_replicas, parameter_checksum
from distnn.train.telemetry import Telemetry
from distnn.train.timeline import Tracer

ROLLED_BACK = -1  # train_step / end_epoch: the state went back to the newest good checkpoint


class Coordinator:
    """Owns the loop; `run()` returns an exit code (0 done, 75 resumable stop); divergence and
    a failed checkpoint write raise TrainingDiverged / CheckpointWriteError on every rank."""

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
        bucket_mb = cfg.comm.bucket_mb if cfg.comm.overlap else None
        if t.invariant:
            self.step_fn: DataParallelStep = InvariantStep(
                self.model, self.optimizer, comm, t.loss, t.l2, t.grad_accum, t.clip_grad_norm,
                t.groups, cfg.seed, bucket_mb, l1=t.l1)
        else:
            self.step_fn = DataParallelStep(self.model, self.optimizer, comm, t.loss, t.l2,
                                            t.grad_accum, t.clip_grad_norm, cfg.seed,
                                            bucket_mb, cfg.comm.compress, l1=t.l1)
        self.is_root = comm.rank == 0
        if self.is_root and cfg.data.validate_on == "test":
            console.err("distnn train: warning: data.validate_on: test: early stopping, the "
                        "schedule and the best checkpoint are chosen on the test split, so its "
                        "final score is not an unbiased estimate")
        self.last_update_ratio = self.last_grad_norm = float("nan")
        self._before = np.empty_like(self.model.params)  # for the update ratio, reused
        self._state_before = np.empty_like(self.model.state)  # BatchNorm stats before a step
        self.keeper = CheckpointKeeper(cfg, comm, self.run_dir, parts)
        self.keeper.started(self.state, None)  # restore() replaces it on a resume
        self.guard = DivergenceGuard(t, self.keeper, metrics, self.is_root)
        self.telemetry = Telemetry(cfg, self.model, metrics, comm.rank)
        self.tracer = Tracer(self.run_dir / "trace", comm.rank, cfg.log.trace_mb) \
            if cfg.log.trace else None
        if self.tracer is not None:
            self.model.spans = self.tracer

    # -- schedule -------------------------------------------------------------------------------
    def lr(self) -> float:
        """The rate of the step about to run."""
        s = self.state
        return self.lr_at(s.step, s.step_in_epoch)

    def lr_at(self, step: int, step_in_epoch: int) -> float:
        s = self.state
        frac = step_in_epoch / max(self.sampler.steps_per_epoch, 1)
        epoch = s.epoch + (frac if self.cfg.schedule.per == "step" else 0.0)
        return float(self.schedule.lr(step, epoch)) * s.lr_scale

    def epoch_lr(self) -> float:
        """The rate of the epoch's last update (what its train and val lines report)."""
        s = self.state
        return self.lr_at(max(s.step - 1, 0), max(s.step_in_epoch - 1, 0))

    def global_count(self, step_in_epoch: int) -> int:
        """Samples in the global batch of this step (the last one of an epoch may be partial)."""
        n, b = len(self.splits.train), self.cfg.train.global_batch
        return min(b, n - step_in_epoch * b)

    # -- one epoch ------------------------------------------------------------------------------
    def run_epoch(self, flag: StopRequest) -> int | None:
        """Train the rest of the current epoch (after a rollback: the rest of the restored
        state's epoch); an exit code if training must end now."""
        code: int | None = ROLLED_BACK
        while code == ROLLED_BACK:
            code = self.run_steps(flag)
        return code

    def run_steps(self, flag: StopRequest) -> int | None:
        """Train from the state's position to its epoch's end, or an exit code / ROLLED_BACK."""
        s, cfg = self.state, self.cfg
        self.sampler.set_epoch(s.epoch)
        steps = self.sampler.steps_per_epoch
        it = BatchIterator(self.splits.train, self.sampler, normalization=self.normalization,
                           augment=self.augment(), prefetch=cfg.data.prefetch,
                           start_step=s.step_in_epoch)
        bar = progress(steps, s.step_in_epoch, s.epoch, self.is_root)
        spans, batches = self.model.spans, iter(it)
        if self.tracer is not None:
            self.tracer.step = s.step  # a resumed run or a rollback starts here
        try:
            tick = time.perf_counter()
            while True:
                with spans.span("data_wait"):
                    batch = next(batches, None)
                if batch is None:
                    break
                x, y = batch
                code = self.train_step(x, y, flag)
                # Wall time per step, waiting for input included: the honest images/s.
                now = time.perf_counter()
                s.epoch_seconds += now - tick
                tick = now
                bar.update(1)
                if not bar.disable:
                    bar.set_postfix(loss=f"{s.epoch_loss / max(s.epoch_count, 1):.4f}",
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

    def train_step(self, x, y, flag: StopRequest) -> int | None:
        """One step; an exit code or ROLLED_BACK when the loop must leave the epoch."""
        s, t = self.state, self.cfg.train
        np.copyto(self._state_before, self.model.state)
        lr = self.lr()
        res = self.step_fn(x, y, self.global_count(s.step_in_epoch), lr, flag.raised,
                           apply=False, step=s.step,
                           indices=self.sampler.local_indices(s.step_in_epoch))
        if s.initial_loss is None:
            s.initial_loss = res.loss
        if self.guard.diverged(s, res.loss):
            return self.on_divergence(f"step {s.step}: loss {res.loss:.4g}", lr, res.loss,
                                      res.correct / max(res.count, 1))
        self.keeper.write_pending()  # the parameters this step's loss has just scored
        if res.stop:
            return self.stop_before_update()
        delta = self.update(lr)
        s.step += 1
        s.step_in_epoch += 1
        s.epoch_loss += res.loss * res.count  # a per-sample mean at the epoch's end
        s.epoch_correct += res.correct
        s.epoch_count += res.count
        self.telemetry.step_done(s, res.loss, res.correct, res.count, lr, x, delta)
        if self.tracer is not None:
            self.tracer.step = s.step  # the spans from here on belong to the next step
            if self.tracer.due():
                self.flush_trace()
        if t.consistency_every and s.step % t.consistency_every == 0:
            check_replicas(self.model, self.comm, s.step)
        if t.max_steps and s.step >= t.max_steps:
            return ExitCode.OK
        if t.eval_every_steps and s.step % t.eval_every_steps == 0 \
                and s.step_in_epoch < self.sampler.steps_per_epoch:
            self.validate(lr)  # logged only: early stopping and plateau decide per epoch
        every = self.cfg.checkpoint.every_steps
        if every and s.step % every == 0 and s.step_in_epoch < self.sampler.steps_per_epoch:
            self.keeper.request(s)  # written once the next step's loss has scored it
        return None

    def update(self, lr: float) -> np.ndarray | None:
        """Apply the step's reduced gradient. Every 50 steps it measures the update ratio, and
        before a layers line (telemetry) it returns the update (parameters before minus after).
        """
        step = self.state.step
        want_ratio = step % 50 == 0
        want_delta = self.is_root and self.telemetry.layers_due(step + 1)  # rank 0's lines
        if want_ratio or want_delta:
            np.copyto(self._before, self.model.params)
        with self.model.spans.span("update"):
            self.step_fn.apply_update(lr)
        if not (want_ratio or want_delta):
            return None
        self._before -= self.model.params
        if want_ratio:
            self.record_ratio(self._before)
        return self._before if want_delta else None

    def stop_before_update(self) -> int:
        """A stop signal came with this step: the step is dropped (no update; BatchNorm
        statistics as before its forward pass) and the state before it, which this step's loss
        has scored, is checkpointed (resuming redoes the step). Collective: all ranks must call.
        """
        self.model.state[...] = self._state_before
        self.keeper.ensure_last(self.state)
        return ExitCode.RESUMABLE

    def record_ratio(self, delta: np.ndarray) -> None:
        """The material's health numbers: ||update|| / ||weights|| (~1e-3) and ||gradient||."""
        norm_w = float(np.linalg.norm(self.model.params))
        self.last_update_ratio = float(np.linalg.norm(delta)) / max(norm_w, 1e-30)
        self.last_grad_norm = float(np.linalg.norm(self.model.grads))

    # -- end of epoch ---------------------------------------------------------------------------
    def sync_state(self) -> None:
        """Average the running statistics of every BatchNorm layer that keeps per-rank
        statistics (`sync: false`), so every replica and the checkpoint hold the same values (a
        synced layer's are equal everywhere already). Collective: all ranks must call."""
        own = [arr for layer in self.model.layers if getattr(layer, "sync", True) is False
               for arr in layer.s.values()]
        if own and self.comm.size > 1:
            flat = np.concatenate([arr.ravel() for arr in own])
            self.comm.allreduce_(flat)
            flat /= self.comm.size
            for arr in own:
                arr.ravel()[...] = flat[:arr.size]
                flat = flat[arr.size:]

    def validate(self, lr: float) -> dict:
        """Score the validation split and log it. Collective: all ranks must call."""
        s, t0 = self.state, time.perf_counter()
        with self.model.spans.span("validation"):
            val = evaluate(self.model, self.splits.val, self.comm, self.normalization,
                           self.cfg.train.loss)
        self.metrics.write(epoch=s.epoch, step=s.step, split="val", loss=val["loss"],
                           accuracy=val["accuracy"], lr=lr, n=val["n"],
                           images_per_s=val["n"] / max(time.perf_counter() - t0, 1e-9),
                           params_crc=parameter_checksum(self.model.params))
        return val

    def end_epoch(self) -> int:
        """Log, validate (the validation loss is the divergence check of the parameters about to
        be checkpointed), update early stopping / plateau / best-k, checkpoint.
        Returns 1 (True): stop, 0 (False): go on, or ROLLED_BACK."""
        s, cfg = self.state, self.cfg
        self.sync_state()
        lr = self.epoch_lr()
        train_accuracy = s.epoch_correct / max(s.epoch_count, 1)
        self.metrics.write(epoch=s.epoch, step=s.step, split="train",
                           loss=s.epoch_loss / max(s.epoch_count, 1), accuracy=train_accuracy,
                           lr=lr,
                           images_per_s=s.epoch_count / max(s.epoch_seconds, 1e-9),
                           grad_norm=self.last_grad_norm, update_ratio=self.last_update_ratio,
                           params_crc=parameter_checksum(self.model.params))
        val = self.validate(lr)
        self.telemetry.epoch_done(s, s.epoch, train_accuracy, val["accuracy"])
        self.flush_trace()
        if self.guard.diverged(s, val["loss"]):
            return self.on_divergence(f"epoch {s.epoch}: validation loss {val['loss']:.4g}", lr,
                                      val["loss"], val["accuracy"])
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
            self.keeper.write_now(s, "best")
        every, every_steps = cfg.checkpoint.every_epochs, cfg.checkpoint.every_steps
        if (every and (finished_epoch + 1) % every == 0) \
                or (every_steps and s.step % every_steps == 0):
            self.keeper.write_now(s, "last")  # train_step leaves an epoch's last step to here
        return cfg.early_stopping.enabled and s.early.exhausted

    def flush_trace(self) -> None:
        """Write this rank's trace file (log.trace); a failure is one warning, the run goes on."""
        if self.tracer is None:
            return
        try:
            self.tracer.flush()
        except OSError as exc:
            console.err(f"distnn train [rank {self.comm.rank}]: warning: could not write "
                        f"{self.tracer.path}: {exc.strerror or exc}")

    # -- checkpoints ----------------------------------------------------------------------------
    def restore(self, snap: ckpt.Snapshot, best: ckpt.Snapshot | None,
                source: Path | None = None) -> None:
        """Continue from a snapshot (already broadcast from rank 0) read from `source`. One that
        does not fit the configured model, optimizer or data is a CheckpointError naming the
        file, raised alike on every rank."""
        channels = self.splits.train.image_shape[-1]
        # (A mean_image or pca_whiten Preprocess was checked against the images' whole shape
        # when the model was built: run.input_shape.)
        if isinstance(self.normalization, tuple) and self.normalization[0].shape != (channels,):
            raise CheckpointError(f"{source}: its normalisation has {self.normalization[0].size}"
                                  f" channel(s), the data {channels}")
        try:
            self.state = self.keeper.load(snap)
            if best is not None:
                keep = self.model.state_dict()
                self.model.load_state_dict(best.model)
                self.best_params = (self.model.params.copy(), self.model.state.copy())
                self.model.load_state_dict(keep)
        except (ValueError, TypeError, KeyError) as exc:
            raise CheckpointError(f"{source}: does not fit this run's model or optimizer: "
                                  f"{exc}") from None
        self.keeper.started(self.state, source)

    def on_divergence(self, what: str, lr: float, loss: float, accuracy: float) -> int:
        """Every rank saw the same reduced loss: all raise TrainingDiverged, or all go back to
        the newest good checkpoint with a lower learning rate (returns ROLLED_BACK)."""
        old = self.state
        self.keeper.drop_pending()  # never written: its parameters did not pass
        self.guard.stop_unless_rolling_back(old, what, lr)
        assert self.keeper.good is not None
        self.state = self.keeper.load(self.keeper.good)
        self.telemetry.reset()
        self.guard.rolled_back(old, self.state, what, lr, self.lr, loss, accuracy)
        return ROLLED_BACK

    # -- the run --------------------------------------------------------------------------------
    def run(self, stop: StopRequest) -> int:
        """Train until epochs/max_steps, early stop, divergence or a stop request; RESUMABLE
        after a stop request, else OK with the best weights in the model. A run resumed from a
        finished state trains no further. Collective: all ranks must call."""
        if not self.finished():
            try:
                code = self.train_epochs(stop)
            finally:
                self.flush_trace()
            if code == ExitCode.RESUMABLE:
                return code
            # last.h5 holds the finished state (scored by the last validation), so a stop
            # request from here on (the test evaluation) resumes into exactly what is left.
            self.keeper.drop_pending()
            self.keeper.ensure_last(self.state)
        if self.cfg.early_stopping.enabled and self.best_params is not None:
            # Restore the best weights whether or not patience ran out.
            self.model.params[...] = self.best_params[0]
            self.model.state[...] = self.best_params[1]
        return ExitCode.OK

    def finished(self) -> bool:
        """Whether training is over: epochs done, max_steps reached or patience exhausted."""
        s, t = self.state, self.cfg.train
        return (s.epoch >= t.epochs or bool(t.max_steps and s.step >= t.max_steps)
                or (self.cfg.early_stopping.enabled and s.early.exhausted))

    def train_epochs(self, stop: StopRequest) -> int | None:
        """The epoch loop; RESUMABLE on a stop request, else None once finished."""
        while not self.finished():
            code = self.run_epoch(stop)
            if code == ExitCode.RESUMABLE:
                return code
            s = self.state  # a rollback in the epoch replaces it
            ended = self.end_epoch() if code is None or s.step_in_epoch else False
            if ended == ROLLED_BACK:
                continue
            if code is not None or ended:
                break
        return None
