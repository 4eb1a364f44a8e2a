"""A run directory at a URL, staged: rank 0 works on local files and publishes every change.

`RemoteRun` (rank 0 only) makes a fresh staging directory, downloads the run's published
objects into it (`Mirror.pull`), and from then on the run reads and writes there as in any local
run directory. `publish(run_dir)` (after a checkpoint or config.yaml is written) and the metrics
sink (at most every METRICS_EVERY seconds) call `Mirror.sync`, which publishes what changed:

1. names whose bytes an object already published holds (best.h5 rotated to best-2.h5): a
   server-side copy, each source copied before it is overwritten;
2. new bytes: uploaded once (remote.upload: temporary key, size check, copy), then copied to
   the other names that hold them (last.h5, a hard link to the newest step file here, becomes a
   server-side copy of it: a plain object any reader can open, and it never names a file that
   is not there yet);
3. objects whose file is gone here (step files pruned by retention): deleted, last of all, so a
   crash part-way leaves last.h5 and the newest step files in place.

A file is known by (inode, size, mtime): a rename or a hard link keeps it, a rewrite or an
append changes it. `release()` publishes what is left (the test line of metrics.jsonl), drops the
lock and removes the staging directory: a rank 0 restarted anywhere starts from the store.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from distnn import console
from distnn.config import ConfigError
from distnn.storage.lock import RemoteLock
from distnn.storage.remote import (
    Location,
    connect,
    copy,
    download,
    published,
    stray_temps,
    upload,
)

METRICS_EVERY = 10.0  # seconds: metrics.jsonl is published at most this often between checkpoints
Identity = tuple[int, int, int]  # (inode, size, mtime_ns)
_RUNS: dict[str, RemoteRun] = {}  # staging directory -> its run, in this process


def _identity(path: Path) -> Identity:
    st = path.stat()
    return st.st_ino, st.st_size, st.st_mtime_ns


class Mirror:
    """The staging directory `staging` of the run directory at `loc`, and what of it is
    published: {name: identity of the local file whose bytes the object holds}."""

    def __init__(self, loc: Location, fs: Any, staging: Path):
        self.loc, self.fs, self.staging = loc, fs, staging
        self.published: dict[str, Identity] = {}
        self.synced = time.monotonic()

    def pull(self) -> None:
        """Download every published object. Checkpoints with the same ETag and size (last.h5
        and the step file it copies) become hard links of one download, as in a local run."""
        objects = published(self.fs, self.loc)
        seen: dict[tuple[str, int], Path] = {}
        for name in sorted(objects, key=lambda n: (n.rpartition("/")[2] == "last.h5", n)):
            info, local = objects[name], self.staging / name
            tag = (str(info.get("ETag") or ""), int(info["size"]))
            twin = seen.get(tag) if tag[0] and name.endswith(".h5") else None
            try:
                if twin is None:
                    raise OSError("no twin")
                os.link(twin, local)
            except OSError:
                download(self.fs, self.loc.path(name), local)
                seen.setdefault(tag, local)
            self.published[name] = _identity(local)

    def _scan(self) -> dict[str, Identity]:
        """{name: identity} of the staging directory's files; hidden ones (temp files) left out."""
        found = {}
        for folder, dirs, files in os.walk(self.staging):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for f in files:
                if not f.startswith("."):
                    path = Path(folder) / f
                    found[path.relative_to(self.staging).as_posix()] = _identity(path)
        return found

    def sync(self) -> None:
        """Publish what changed since the last sync (see the module doc for the order). An
        error (OSError or the store's) propagates; what was done is remembered, the next sync
        does the rest."""
        local = self._scan()
        todo = {n: i for n, i in local.items() if self.published.get(n) != i}
        holders = {i: n for n, i in self.published.items()}
        copies = {n: holders[i] for n, i in todo.items() if i in holders and holders[i] != n}
        while copies:  # a copy whose target another copy still reads from waits
            ready = [n for n in copies if n not in copies.values()]
            if not ready:  # a cycle (distnn makes none): below, sources are looked up anew
                break
            for name in ready:
                copy(self.fs, self.loc.path(copies.pop(name)), self.loc.path(name),
                     todo[name][1])
                self.published[name] = todo.pop(name)
        for name in sorted(todo, key=lambda n: (n.rpartition("/")[2] == "last.h5", n)):
            ident, path = todo[name], self.loc.path(name)
            source = next((n for n, i in self.published.items() if i == ident), None)
            if source is not None:
                copy(self.fs, self.loc.path(source), path, ident[1])
            elif name.startswith("checkpoints/"):  # written once, never changed: streamed
                upload(self.fs, self.staging / name, path)
            else:  # may grow while it is read (TensorBoard's writer thread): one snapshot
                upload(self.fs, self.staging / name, path, (self.staging / name).read_bytes())
            self.published[name] = ident
        for name in sorted(set(self.published) - set(local)):
            self.fs.rm_file(self.loc.path(name))
            del self.published[name]
        self.synced = time.monotonic()


class RemoteRun:
    """Rank 0's side of a run directory at `url`: its lock (`lock` False: the Ray driver holds
    it), its staging directory (`staging`) and mirror. ConfigError naming the URL when the
    store cannot be used."""

    def __init__(self, url: str, lock: bool):
        self.lock = RemoteLock.claim(url) if lock else None
        self.url = url.rstrip("/")
        self.staging = Path(tempfile.mkdtemp(prefix="distnn-run-"))
        try:
            loc, fs = (self.lock.loc, self.lock.fs) if self.lock else connect(url)
            self.mirror = Mirror(loc, fs, self.staging)
            self.mirror.pull()
        except BaseException as exc:
            self.release()  # not registered yet: nothing is published
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"{url}: cannot read the run directory: {exc}") from None
        _RUNS[str(self.staging)] = self

    def shown(self, text: str) -> str:
        """`text` with the staging directory named by the URL."""
        return text.replace(str(self.staging), self.url)

    def remove_stale_temps(self) -> None:
        """Delete the temporary keys of writers that died (only this run writes here now)."""
        try:
            stray = stray_temps(self.mirror.fs, self.mirror.loc)
            for name in stray:
                self.mirror.fs.rm_file(self.mirror.loc.path(name))
        except Exception as exc:  # not fatal: readers skip them
            console.err(f"distnn train: warning: could not remove temporary objects in "
                        f"{self.url}: {exc}")
            return
        if stray:
            console.err(f"distnn train: removed {len(stray)} temporary object(s) of an "
                        f"interrupted upload: {', '.join(stray)}")

    def release(self) -> None:
        """Publish what is left (a failure is a warning), release the lock, remove staging.
        A refused run changed nothing: there is nothing to publish."""
        if _RUNS.pop(str(self.staging), None) is not None:
            try:
                self.mirror.sync()
            except Exception as exc:
                console.err(f"distnn train: warning: could not publish the last changes to "
                            f"{self.url}: {exc}")
        if self.lock is not None:
            self.lock.release()
        shutil.rmtree(self.staging, ignore_errors=True)


def run_for(run_dir: Path | str) -> RemoteRun | None:
    """The remote run staged at `run_dir` in this process (rank 0), else None."""
    return _RUNS.get(str(run_dir))


def publish(run_dir: Path | str) -> None:
    """Publish the changes of a staged run directory (nothing for a local one). Raises on
    failure: callers on the checkpoint path make it a CheckpointWriteError."""
    run = run_for(run_dir)
    if run is not None:
        run.mirror.sync()


def metrics_sink(run_dir: Path | str) -> Callable[[dict], None] | None:
    """A MetricsLog sink publishing at most every METRICS_EVERY s (a failure: one warning)."""
    run = run_for(run_dir)
    if run is None:
        return None
    failed: list[Exception] = []

    def sink(record: dict) -> None:
        if time.monotonic() - run.mirror.synced < METRICS_EVERY:
            return
        try:
            run.mirror.sync()
        except Exception as exc:
            if not failed:
                console.err(f"distnn train: warning: could not publish metrics to {run.url}: "
                            f"{exc}; retried at the next checkpoint")
            failed.append(exc)

    return sink


def shown(path: Path | str) -> Path | str:
    """The URL of a staged run directory (or of a path inside it), else `path` unchanged."""
    for staging, run in _RUNS.items():
        if str(path) == staging or str(path).startswith(staging + os.sep):
            return run.shown(str(path))
    return path


@atexit.register
def _remove_staging() -> None:
    """Staging directories of runs never released (the Python API keeps them to the end)."""
    for staging in list(_RUNS):
        with contextlib.suppress(OSError):
            shutil.rmtree(staging, ignore_errors=True)
