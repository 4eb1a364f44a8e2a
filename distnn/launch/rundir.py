"""Which run directory a run writes to, and which checkpoint it resumes from.

Run directory contract (scripts depend on it): <run_dir>/config.yaml (resolved config),
<run_dir>/metrics.jsonl, <run_dir>/checkpoints/last.h5 and best.h5 (and step-<n>.h5, the newest
of which last.h5 links: train/retention.py).

A run directory given as a URL (`s3://bucket/prefix`) is staged by rank 0 (storage/mirror.py):
what is decided here is decided on a local copy of its published objects, under the store's
lock (storage/lock.py) instead of the file lock.
"""

from __future__ import annotations

import time
from pathlib import Path

from distnn import console
from distnn.comm import Communicator
from distnn.config import Config, ConfigError
from distnn.launch.lock import RunDirLock
from distnn.storage import is_url
from distnn.storage.mirror import RemoteRun, shown
from distnn.train.retention import find_resumable, has_checkpoint


def latest_run_dir(name: str) -> Path | None:
    """The newest runs/<name>-* that holds a checkpoint (for --resume auto)."""
    found = sorted(p for p in Path("runs").glob(f"{name}-*") if has_checkpoint(p / "checkpoints"))
    return found[-1] if found else None


def choose_run_dir(run_dir: str | None, resume: str | None, name: str) -> Path:
    """`--run-dir`, else with `--resume auto` the newest run of this name, else a new
    runs/<name>-<time>."""
    if run_dir:
        return Path(run_dir)
    found = latest_run_dir(name) if resume == "auto" else None
    return found or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _decide(chosen: Path, resume: str | None) -> str | tuple[str, str | None]:
    """(run directory, checkpoint to resume or None), or the message refusing the request."""
    folder = chosen / "checkpoints"
    if resume == "auto":
        start, skipped = find_resumable(folder)
        if skipped and start is None:
            return f"no checkpoint in {folder} passes its checks: {'; '.join(skipped)}"
        if skipped:
            console.err(f"distnn train: warning: skipped {'; '.join(skipped)}; "
                        f"resuming from {shown(str(start))}")
    elif resume:
        start = Path(resume)
    elif has_checkpoint(folder):
        return (f"run directory {chosen} already holds a run ({folder}); pass --resume auto to "
                f"continue it, or choose another --run-dir")
    else:
        start = None
    return str(chosen), (str(start) if start else None)


def resolve_run(run_dir: str | None, resume: str | None, cfg: Config, comm: Communicator,
                lock: bool = True) -> tuple[Path, Path | None, RunDirLock | RemoteRun | None]:
    """Rank 0 decides the run directory and the checkpoint to resume (`resume`: None, "auto"
    or a path) and, with `lock`, takes the run directory's lock (launch/lock.py) before
    anything is written or loaded; every rank gets the answer, or the same ConfigError.
    For a URL the run directory is rank 0's staging directory.
    Returns (run directory, checkpoint or None, on rank 0 the lock, or the RemoteRun to
    release, else None). Collective: all ranks must call."""
    decision: str | tuple[str, str | None] | None = None
    held: RunDirLock | RemoteRun | None = None
    if comm.rank == 0:
        try:  # the lock first: a live run is named as such, and nothing is read under it
            if run_dir and is_url(run_dir):
                held = RemoteRun(run_dir, lock)  # always held: it owns the staging directory
                decision = _decide(held.staging, resume)
                decision = held.shown(decision) if isinstance(decision, str) else decision
            else:
                chosen = choose_run_dir(run_dir, resume, cfg.name)
                held = RunDirLock.claim(chosen) if lock else None
                decision = _decide(chosen, resume)
        except ConfigError as exc:
            decision = str(exc)
        if isinstance(decision, str) and held is not None:
            held.release()
            held = None
        elif isinstance(held, RemoteRun):
            held.remove_stale_temps()
    decision = comm.bcast_obj(decision)
    if isinstance(decision, str):
        raise ConfigError(decision)
    assert decision is not None
    return Path(decision[0]), (Path(decision[1]) if decision[1] else None), held
