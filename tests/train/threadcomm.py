"""A Communicator whose ranks are threads of this process: N replicas of a step run side by
side in one test, in a second, where mpiexec would start N interpreters. The reductions run in
rank order in the buffer's dtype, as the Ray and shared-memory backends do."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import numpy as np

from distnn.comm.base import Communicator

_OPS = {"sum": np.add, "max": np.maximum, "min": np.minimum}


class _Shared:
    def __init__(self, size: int):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: list[Any] = [None] * size


class ThreadComm(Communicator):
    name = "threads"

    def __init__(self, rank: int, shared: _Shared):
        self._rank, self._size, self.shared, self.timeout = rank, shared.size, shared, None

    def _allreduce(self, buf, op):
        sh = self.shared
        sh.slots[self._rank] = buf.copy()
        sh.barrier.wait()
        acc = sh.slots[0].copy()
        for part in sh.slots[1:]:
            _OPS[op](acc, part, out=acc)
        sh.barrier.wait()
        buf[...] = acc

    def _broadcast(self, buf, root):
        sh = self.shared
        if self._rank == root:
            sh.slots[root] = buf.copy()
        sh.barrier.wait()
        buf[...] = sh.slots[root]
        sh.barrier.wait()

    def _barrier(self):
        self.shared.barrier.wait()

    def abort(self, message, code=1):
        self.shared.barrier.abort()
        raise RuntimeError(message)


def run_ranks(size: int, job: Callable[[Communicator], Any]) -> list[Any]:
    """job(comm) on `size` thread ranks; their results in rank order (the first error raised)."""
    shared = _Shared(size)
    results: list[Any] = [None] * size
    errors: list[BaseException] = []

    def main(rank: int) -> None:
        try:
            results[rank] = job(ThreadComm(rank, shared))
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)
            shared.barrier.abort()

    threads = [threading.Thread(target=main, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results
