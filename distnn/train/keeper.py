"""When a checkpoint may be written, and writing it: rank 0 writes, every rank learns the outcome.

A checkpoint only ever holds parameters whose loss has been measured and passed the divergence
check. The coordinator *requests* a checkpoint after an update (the parameters are not scored
yet): the snapshot is held and written during the next step, once that step's loss of exactly
these parameters has passed (`write_pending`), or dropped if it diverged. At an epoch end the
validation loss of the parameters scores them, and they are written at once (`write`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import yaml

from distnn import console
from distnn.comm import Communicator
from distnn.config import Config, to_dict
from distnn.storage import mirror
from distnn.train import checkpoint as ckpt
from distnn.train import retention
from distnn.train.errors import CheckpointWriteError
from distnn.train.state import RunState


def write_on_root(comm: Communicator, action: Callable[[], None], what: str,
                  then: Callable[[], str] | None = None) -> None:
    """Rank 0 does the file work `action`; if it fails (ENOSPC, EIO, an error part-way), every
    rank raises the same CheckpointWriteError (exit 74): "<what>: <the error>[; <then()>]".
    Collective: all ranks must call."""
    error = None
    if comm.rank == 0:
        try:
            action()
        except Exception as exc:
            error = f"{what}: {exc}" + (f"; {then()}" if then else "")
    error = comm.bcast_obj(error)
    if error:
        raise CheckpointWriteError(error)


class CheckpointKeeper:
    """The checkpoints of one run, on every rank (only rank 0 touches files): what a snapshot
    holds (the model, optimizer, schedule and normalisation given here, and a RunState), when
    one is written, and writing it.

    `good` (kept only with train.on_divergence: rollback, on every rank) is the newest snapshot
    known good: the last one written, else the state the run started from.
    """

    def __init__(self, cfg: Config, comm, run_dir: Path, parts):
        self.cfg, self.comm = cfg, comm
        self.model, self.optimizer, self.schedule, self.normalization = (
            parts.model, parts.optimizer, parts.schedule, parts.normalization)
        self.folder = Path(run_dir) / "checkpoints"
        self.config_yaml = yaml.safe_dump(to_dict(cfg))
        train = parts.splits.train  # what the model takes and names (distnn.load reads it)
        pixels = len(train) == 0 or train.read(np.arange(1)).dtype == np.uint8
        self.inputs = {"input_shape": list(parts.model.input_shape),
                       "class_names": [str(c) for c in train.class_names],
                       "pixels": bool(pixels)}  # False: float codes of a features file
        self.keep_good = cfg.train.on_divergence == "rollback"
        self.good: ckpt.Snapshot | None = None
        self.pending: tuple[ckpt.Snapshot | None, int] | None = None
        self.last_written: tuple[Path, int] | None = None
        self.resumed: Path | None = None
        if comm.rank == 0:
            self.remove_stale_temps()

    def remove_stale_temps(self) -> None:
        """Rank 0, at start: the temp files of writers that died before this run started."""
        try:
            removed = retention.remove_stale_temps(self.folder, time.time())
        except OSError as exc:  # not fatal: they are only dead weight
            console.err(f"distnn train: warning: could not remove stale temp files "
                        f"in {self.folder}: {exc}")
            return
        if removed:
            console.err(f"distnn train: removed {len(removed)} temp file(s) of an interrupted "
                        f"checkpoint write: {', '.join(p.name for p in removed)}")

    def wants_snapshot(self) -> bool:
        """Whether this rank needs snapshot copies (rank 0 writes them; rollback keeps them)."""
        return self.comm.rank == 0 or self.keep_good

    def snapshot(self, state: RunState) -> ckpt.Snapshot:
        """Copies of everything needed to continue exactly from `state`."""
        if hasattr(self.schedule, "state_dict"):
            state.schedule = self.schedule.state_dict()
        return ckpt.Snapshot(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(),
            normalization=self.normalization, step=state.step, epoch=state.epoch,
            step_in_epoch=state.step_in_epoch, config_yaml=self.config_yaml,
            model_spec=list(self.cfg.model), coordinator=state.to_json(), inputs=self.inputs)

    def load(self, snap: ckpt.Snapshot) -> RunState:
        """Copy `snap` into the model, optimizer and schedule; returns its RunState."""
        self.model.load_state_dict(snap.model)
        self.optimizer.load_state_dict(snap.optimizer)
        state = RunState.from_json(snap.coordinator)
        if state.schedule and hasattr(self.schedule, "load_state_dict"):
            self.schedule.load_state_dict(state.schedule)
        return state

    def started(self, state: RunState, resumed: Path | None) -> None:
        """The run starts from `state` (read from `resumed`, if given): the rollback target
        until a checkpoint is written. A step file resumed by fallback becomes last.h5.
        Collective when `resumed` is given: all ranks must call."""
        self.resumed = resumed
        if self.keep_good:
            self.good = self.snapshot(state)
        if resumed is not None:
            self._on_root(lambda: self._relink(resumed),
                          f"could not point {self.folder / 'last.h5'} at {resumed}")

    def _relink(self, resumed: Path) -> None:
        retention.resumed_from(self.folder, resumed)
        mirror.publish(self.folder.parent)  # a run directory at a URL: the store follows

    def request(self, state: RunState) -> None:
        """Hold a checkpoint of the current state (its parameters not scored yet) until
        `write_pending`. Called at the same step on every rank."""
        self.pending = (self.snapshot(state) if self.wants_snapshot() else None, state.step)

    def drop_pending(self) -> None:
        self.pending = None

    def write_pending(self) -> None:
        """The held state's loss has passed: write it. Collective: all ranks must call."""
        if self.pending is not None:
            (snap, step), self.pending = self.pending, None
            self.write(snap, "last", step)

    def write_now(self, state: RunState, kind: str) -> None:
        """Checkpoint the current, already scored state ('last' or 'best').
        Collective: all ranks must call."""
        need = self.comm.rank == 0 or (kind == "last" and self.keep_good)
        self.write(self.snapshot(state) if need else None, kind, state.step)

    def ensure_last(self, state: RunState) -> None:
        """last.h5 holds `state` (already scored): written unless the newest written
        checkpoint is of this very step. Collective: all ranks must call."""
        if self.last_written is None or self.last_written[1] != state.step:
            self.write_now(state, "last")

    def write(self, snap: ckpt.Snapshot | None, kind: str, step: int) -> None:
        """Rank 0 writes checkpoints/step-<n>.h5 + last.h5 ('last') or best.h5 ('best') of
        `step`; a failure raises CheckpointWriteError on every rank, the previous checkpoint
        intact. `snap` may be None on ranks that do not keep snapshots.
        Collective: all ranks must call."""
        assert snap is not None or self.comm.rank != 0
        with self.model.spans.span("checkpoint"):
            self._on_root(lambda: self._write_files(snap, kind),
                          f"could not write the {kind} checkpoint of step {step} in "
                          f"{self.folder}")
        if kind == "last":
            self.last_written = (self.folder / "last.h5", step)
            if self.keep_good:
                self.good = snap

    def _on_root(self, action: Callable[[], None], what: str) -> None:
        """write_on_root, naming the newest good checkpoint (still intact) in the error."""
        write_on_root(self.comm, action, what,
                      lambda: self.describe_last() or "no earlier checkpoint exists")

    def _write_files(self, snap: ckpt.Snapshot | None, kind: str) -> None:
        assert snap is not None
        if kind == "last":
            retention.save_step(snap, self.folder, self.cfg.checkpoint.keep_last)
        else:
            self.rotate_best()
            ckpt.save_checkpoint(snap, self.folder / "best.h5")
        # A run directory at a URL: published before every rank learns that the write
        # succeeded, so a checkpoint counts as written only once another node can read it.
        mirror.publish(self.folder.parent)

    def rotate_best(self) -> None:
        """best.h5 is the newest best; best-2.h5 .. best-k.h5 the k-1 bests before it."""
        k = self.cfg.checkpoint.keep_best
        for i in range(k - 1, 0, -1):
            src = self.folder / ("best.h5" if i == 1 else f"best-{i}.h5")
            if src.exists():
                src.replace(self.folder / f"best-{i + 1}.h5")

    def describe_last(self) -> str | None:
        """Where the newest good checkpoint is (None: there is none). Names only files that
        exist: never a checkpoints/ folder that was not created."""
        if self.last_written is not None:
            path, step = self.last_written
            return f"the last good checkpoint is {path} (step {step})"
        if self.resumed is not None:
            return f"the last good checkpoint is {self.resumed}, which this run resumed from"
        return None
