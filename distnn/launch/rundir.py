"""Which run directory a run writes to, and which checkpoint it resumes from.

Run directory contract (scripts depend on it): <run_dir>/config.yaml (resolved config),
<run_dir>/metrics.jsonl, <run_dir>/checkpoints/last.h5 and best.h5.
"""

from __future__ import annotations

import time
from pathlib import Path

from distnn.comm import Communicator
from distnn.config import Config, ConfigError


def latest_run_dir(name: str) -> Path | None:
    """The newest runs/<name>-* that holds a last checkpoint (for --resume auto)."""
    found = sorted(p for p in Path("runs").glob(f"{name}-*")
                   if (p / "checkpoints/last.h5").exists())
    return found[-1] if found else None


def choose_run_dir(run_dir: str | None, resume: str | None, name: str) -> Path:
    """`--run-dir`, else with `--resume auto` the newest run of this name, else a new
    runs/<name>-<time>."""
    if run_dir:
        return Path(run_dir)
    found = latest_run_dir(name) if resume == "auto" else None
    return found or Path("runs") / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"


def _decide(run_dir: str | None, resume: str | None, name: str) -> str | tuple[str, str | None]:
    """(run directory, checkpoint to resume or None), or the message refusing the request."""
    chosen = choose_run_dir(run_dir, resume, name)
    last = chosen / "checkpoints" / "last.h5"
    if resume == "auto":
        start = last if last.exists() else None
    elif resume:
        start = Path(resume)
    elif last.exists():
        return (f"run directory {chosen} already holds a run ({last}); pass --resume auto to "
                f"continue it, or choose another --run-dir")
    else:
        start = None
    return str(chosen), (str(start) if start else None)


def resolve_run(run_dir: str | None, resume: str | None, cfg: Config,
                comm: Communicator) -> tuple[Path, Path | None]:
    """Rank 0 decides the run directory and the checkpoint to resume (`resume`: None, "auto"
    or a path); every rank gets its answer, or the same ConfigError.
    Collective: all ranks must call."""
    decision = _decide(run_dir, resume, cfg.name) if comm.rank == 0 else None
    decision = comm.bcast_obj(decision)
    if isinstance(decision, str):
        raise ConfigError(decision)
    assert decision is not None
    return Path(decision[0]), (Path(decision[1]) if decision[1] else None)
