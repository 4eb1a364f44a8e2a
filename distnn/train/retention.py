"""The checkpoints/ folder: step-numbered checkpoints, last.h5, retention, fallback, temp files.

- `checkpoints/step-000440.h5` is the checkpoint of step 440; the `checkpoint.keep_last` newest
  are kept. `last.h5` is a hard link to the newest one (no second copy on disk): made under a
  temp name in the same folder and os.replace'd over last.h5, then the folder fsynced, so a
  crash leaves last.h5 naming the previous or the new file, both complete. Where the file system
  has no hard links, last.h5 is written as a second copy, as atomically.
- `--resume auto` takes last.h5, or when it fails its checks, the newest step file that passes.
- Temp files (`.<name>.h5.<8 chars>.tmp`) are only ever written by rank 0 of the run holding the
  folder; one left from before this run started is a dead writer's, and is removed at start.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path

from distnn.train.checkpoint import (
    Snapshot,
    commit,
    load_checkpoint,
    replace_atomically,
    save_checkpoint,
    temp_path,
)
from distnn.train.errors import CheckpointError

STEP_FILE = re.compile(r"step-(\d+)\.h5")
TEMP_FILE = re.compile(r"\..+\.h5\.[A-Za-z0-9_]{8}\.tmp")
NO_HARD_LINKS = {errno.EPERM, errno.EXDEV, errno.EMLINK, errno.ENOSYS, errno.EOPNOTSUPP}


def step_path(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:06d}.h5"


def step_files(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of every step-numbered checkpoint in `folder`, newest first."""
    found = []
    if Path(folder).is_dir():
        for p in Path(folder).iterdir():
            m = STEP_FILE.fullmatch(p.name)
            if m:
                found.append((int(m.group(1)), p))
    return sorted(found, reverse=True)


def has_checkpoint(folder: Path) -> bool:
    """True when `folder` holds last.h5 or a step-numbered checkpoint."""
    return (Path(folder) / "last.h5").exists() or bool(step_files(folder))


def link_last(target: Path) -> None:
    """Make checkpoints/last.h5 name `target` (a file in the same folder): a hard link made under
    a temp name and os.replace'd over last.h5; a copy, as atomic, where there are no hard links.
    """
    last = target.parent / "last.h5"
    tmp = temp_path(last)
    try:
        os.link(target, tmp)
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
        replace_atomically(last, target.read_bytes())
        return
    commit(tmp, last)


def resumed_from(folder: Path, path: Path) -> None:
    """A run resumes from `path`: when that is a step file of `folder` that last.h5 does not
    name (--resume auto fell back past a corrupt or missing last.h5), point last.h5 at it."""
    last = Path(folder) / "last.h5"
    path = Path(path)
    if not (STEP_FILE.fullmatch(path.name) and path.is_file()
            and path.parent.resolve() == Path(folder).resolve()):
        return
    if not (last.exists() and last.samefile(path)):
        link_last(path)


def prune(folder: Path, keep: int, step: int) -> None:
    """Keep the `keep` newest step files up to `step`; remove those of later steps, which
    belong to a timeline this run abandoned (resumed from an earlier file, or rolled back)."""
    kept = 0
    for n, path in step_files(folder):
        if n <= step and kept < keep:
            kept += 1
        else:
            path.unlink(missing_ok=True)


def save_step(snap: Snapshot, folder: Path, keep: int) -> Path:
    """Write checkpoints/step-<n>.h5 atomically, point last.h5 at it, keep the newest `keep`.
    An exception at any point leaves the previous last.h5 intact and no temp file behind."""
    path = step_path(folder, snap.step)
    save_checkpoint(snap, path)
    link_last(path)
    prune(folder, keep, snap.step)
    return folder / "last.h5"


def find_resumable(folder: Path) -> tuple[Path | None, list[str]]:
    """The newest checkpoint in `folder` that passes its checks (last.h5 first, then the step
    files newest first), and one 'name (reason)' per file skipped on the way (a missing last.h5
    beside step files counts as one)."""
    folder = Path(folder)
    candidates = [p for _, p in step_files(folder)]
    skipped: list[str] = []
    if (folder / "last.h5").exists():
        candidates.insert(0, folder / "last.h5")
    elif candidates:
        skipped.append("last.h5 (missing)")
    failed: set[tuple[int, int]] = set()
    for path in candidates:
        try:
            st = path.stat()
        except OSError as exc:  # e.g. a dangling link: skipped like a corrupt file
            skipped.append(f"{path.name} ({exc.strerror or exc})")
            continue
        if (st.st_dev, st.st_ino) in failed:  # last.h5 is a link to it: the same bytes
            continue
        try:
            load_checkpoint(path)
            return path, skipped
        except CheckpointError as exc:
            failed.add((st.st_dev, st.st_ino))
            reason = str(exc).removeprefix(f"{path}: ")
            skipped.append(f"{path.name} ({reason})")
    return None, skipped


def remove_stale_temps(folder: Path, started: float) -> list[Path]:
    """Remove the temp files of checkpoint writers that died (last modified before `started`,
    this run's start); returns them. Only names of the writer's own temp pattern are touched."""
    removed = []
    if Path(folder).is_dir():
        for p in sorted(Path(folder).iterdir()):
            if TEMP_FILE.fullmatch(p.name) and p.is_file() and p.stat().st_mtime < started:
                p.unlink(missing_ok=True)
                removed.append(p)
    return removed
