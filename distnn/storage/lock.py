"""The lock of a run directory in an object store: one run at a time writes there.

A file lock cannot cover an object store, and no kernel drops it when its holder dies. So the
lock is an object, `<prefix>/distnn.lock`, created with a conditional put (`If-None-Match: *`:
the store refuses it when the object exists, whoever races for it) and holding who has it (host,
pid, start). The holder renews it every LEASE / 4 seconds from a daemon thread (a put with
`If-Match` on its own ETag); a lock not renewed for LEASE seconds, or whose holder is a process
of this host that no longer exists, is stale and is taken over, again with `If-Match` on the
ETag that was seen, so of two claimants one wins. Release deletes it (`If-Match` as well, so a
lock taken over in between is left to its new holder).

It needs a store with conditional writes (AWS S3 since 2024, MinIO, moto): elsewhere the claim
fails with one line naming the URL.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import threading
import time
from typing import Any

from distnn import console
from distnn.config import ConfigError
from distnn.storage.remote import LOCK_NAME, Location, connect

LEASE = 60.0  # seconds without a renewal after which another run may take the lock over
REFUSED = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _refused(exc: BaseException) -> bool:
    """Whether `exc` (s3fs's translation of a botocore error) is a failed condition."""
    for e in (exc, exc.__cause__, exc.__context__):
        code = getattr(e, "response", {}).get("Error", {}).get("Code") if e else None
        if code in REFUSED or isinstance(e, FileExistsError):
            return True
    return False


def _alive(pid: object) -> bool:
    try:
        os.kill(int(pid), 0)  # type: ignore[call-overload]
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid: assume it lives
    return True


class RemoteLock:
    """Held from `claim` until `release` (renewed meanwhile); `lost` once another run took it."""

    def __init__(self, loc: Location, fs: Any, etag: str, started: str):
        self.loc, self.fs, self.etag, self.started = loc, fs, etag, started
        self.lost = False
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="distnn-lock", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.loc.url}/{LOCK_NAME}"

    @classmethod
    def claim(cls, url: str) -> RemoteLock:
        """Lock the run directory `url` for this process, or raise ConfigError naming the run
        that holds it, or why the store cannot be used."""
        loc, fs = connect(url)
        started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        for _ in range(3):  # the holder may release between our put and our read
            try:
                return cls(loc, fs, _put(fs, loc, started, IfNoneMatch="*"), started)
            except Exception as exc:
                if not _refused(exc):
                    raise ConfigError(f"{loc.url}/{LOCK_NAME}: cannot create the run "
                                      f"directory's lock (the store needs conditional "
                                      f"writes): {exc}") from None
            try:  # the ETag first: a renewal after it makes the take-over's If-Match fail
                seen = fs.info(loc.path(LOCK_NAME))
                body = fs.cat_file(loc.path(LOCK_NAME))
            except FileNotFoundError:
                continue
            return cls._take_over(loc, fs, seen, _holder(body), started)
        raise ConfigError(f"{loc.url}/{LOCK_NAME}: the lock keeps changing hands; is another "
                          f"run starting in {loc.url}?")

    @classmethod
    def _take_over(cls, loc: Location, fs: Any, seen: dict, holder: dict,
                   started: str) -> RemoteLock:
        """Take the lock object `seen` (its info) held by `holder` if it is stale, else
        ConfigError naming the holder."""
        where = f"{loc.url}/{LOCK_NAME}"
        age = time.time() - seen["LastModified"].timestamp()
        gone = holder.get("host") == socket.gethostname() and not _alive(holder.get("pid"))
        if age < LEASE and not gone:
            raise ConfigError(f"run directory {loc.url} is in use by {_describe(holder)}, "
                              f"lock renewed {age:.0f} s ago ({where}); wait for that run to "
                              f"end, or choose another --run-dir")
        try:
            taken = cls(loc, fs, _put(fs, loc, started, IfMatch=seen["ETag"]), started)
        except Exception as exc:
            raise ConfigError(f"run directory {loc.url}: another run took over the stale lock "
                              f"of {_describe(holder)} first ({where}): {exc}") from None
        why = "its process is gone" if gone else f"not renewed for {age:.0f} s"
        console.err(f"distnn: warning: taking over the stale lock of {_describe(holder)} in "
                    f"{loc.url}: {why}")
        return taken

    def _renew(self) -> None:
        warned = False
        while not self._stop.wait(LEASE / 4):
            with self._guard:
                try:
                    self.etag = _put(self.fs, self.loc, self.started, IfMatch=self.etag)
                except Exception as exc:
                    if _refused(exc):
                        self.lost = True
                        console.err(f"distnn: warning: the lock {self.url} was taken over by "
                                    f"another run (not renewed within {LEASE:g} s?)")
                        return
                    if not warned:  # a network blip: the next renewal may pass
                        console.err(f"distnn: warning: could not renew the lock {self.url}: "
                                    f"{exc}")
                    warned = True

    def release(self) -> None:
        """Stop renewing and delete the lock object, unless another run has it now."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        if self.lost:
            return
        key = self.loc.key(LOCK_NAME)
        try:
            self.fs.call_s3("delete_object", Bucket=self.loc.bucket, Key=key, IfMatch=self.etag)
        except Exception as exc:
            if _refused(exc):
                return
            # A store without conditional deletes: the holder is still us, delete plainly.
            with contextlib.suppress(Exception):
                self.fs.call_s3("delete_object", Bucket=self.loc.bucket, Key=key)


def _put(fs: Any, loc: Location, started: str, **condition: str) -> str:
    """Write this process's holder record as the lock object under `condition`; its ETag."""
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "started": started, "renewed": time.time()}).encode()
    out = fs.call_s3("put_object", Bucket=loc.bucket, Key=loc.key(LOCK_NAME), Body=body,
                     **condition)
    return str(out["ETag"])


def _holder(data: bytes) -> dict:
    try:
        holder = json.loads(data or b"{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _describe(holder: dict) -> str:
    if not holder.get("pid"):
        return "another process"
    return f"pid {holder.get('pid')} on {holder.get('host')} (started {holder.get('started')})"
