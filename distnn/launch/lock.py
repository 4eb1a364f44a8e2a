"""The run directory's lock: one run at a time writes into a run directory.

Rank 0 (or the Ray driver) takes an exclusive POSIX lock (fcntl.lockf, which also works on NFS)
on <run_dir>/distnn.lock before anything is written there, and writes who holds it (host,
pid, start time) into the file. The kernel drops the lock when the holder exits, however it
exits, so a lock file whose lock is free is stale: the next run takes it over with a warning.
Taking the lock also proves the run directory writable, before any data is loaded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from pathlib import Path

from distnn import console
from distnn.config import ConfigError

LOCK_NAME = "distnn.lock"


class RunDirLock:
    """Held from `claim` until `release` (or the process's end)."""

    def __init__(self, path: Path, fd: int, created: list[Path]):
        self.path, self._fd = path, fd
        self.created = created  # the folders claim made, innermost first

    @classmethod
    def claim(cls, run_dir: Path) -> RunDirLock:
        """Lock `run_dir` (created if missing) for this process, or raise ConfigError naming
        the run that holds it, or why the directory cannot be written."""
        path = Path(run_dir) / LOCK_NAME
        created = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ConfigError(f"run directory {run_dir} cannot be written: "
                              f"{exc.strerror or exc} ({exc.filename or path})") from None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _read(fd)
            os.close(fd)
            raise ConfigError(f"run directory {run_dir} is in use by {_describe(holder)} "
                              f"(lock {path}); wait for that run to end, or choose another "
                              f"--run-dir") from None
        previous = _read(fd)
        if previous.get("pid") not in (None, os.getpid()):
            console.err(f"distnn: warning: taking over the stale lock of {_describe(previous)} "
                        f"in {run_dir}: that process no longer holds it")
        _write(fd, {"host": socket.gethostname(), "pid": os.getpid(),
                    "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        return cls(path, fd, created)

    def release(self) -> None:
        """Empty the lock file (a later run sees no stale holder) and drop the lock. A run
        directory that `claim` created and nothing else was written to (the run was refused)
        is removed: a refused request leaves nothing behind."""
        if self._fd < 0:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        unused = self.created and [p.name for p in self.path.parent.iterdir()] == [LOCK_NAME]
        if unused:
            with contextlib.suppress(OSError):
                self.path.unlink()
                for folder in self.created:  # rmdir: only while empty
                    folder.rmdir()
        os.close(self._fd)  # closing the descriptor drops the lock
        self._fd = -1


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096) or b"{}")
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write(fd: int, holder: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(holder) + "\n").encode())
    os.fsync(fd)


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (started "
            f"{holder.get('started')})")
