"""Intra-op threads for the convolution layers, with results independent of the thread count.

A conv layer cuts its batch into at most GROUPS groups of whole chunks of images; how many
depends only on the batch and the layer's shape, never on the thread count. Each group writes
its own images' outputs (or input gradients) and its own partial weight gradient, and the
partials are summed in group order afterwards. The groups run on `get_num_threads()` Python
threads: the Numba kernels release the GIL (`nogil=True`) and BLAS is held to one thread inside
a parallel region (k threads each starting k BLAS threads would oversubscribe the cores). So one
thread or eight give bit-identical gradients; only the time changes.

BLAS should stay at one thread outside the parallel regions too (dense layers then run on one
thread): after a multi-threaded call OpenBLAS's worker threads keep spinning for a while, on
the very cores this pool needs next (measured, cifar net at 2 threads: 840 img/s with 2 BLAS
threads, 1188 img/s with 1). `limit` does both; `distnn.train` runs under
`limit(train.threads)` (cores / ranks by default).

The default is one thread, as in an MPI rank or a Ray actor that owns one core.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from threadpoolctl import ThreadpoolController

# The most groups a layer cuts its batch into (each group holds one partial weight gradient).
GROUPS = 16

_count = 1
_pool: ThreadPoolExecutor | None = None
_pool_key = (0, 0)  # (pid, size) of _pool
_lock = threading.Lock()
_blas = None


def set_num_threads(count: int) -> None:
    """Threads the conv layers of this process use from now on (>= 1)."""
    global _count
    if not isinstance(count, int) or isinstance(count, bool) or count < 1:
        raise ValueError(f"distnn.nn threads: {count!r}, expected an integer >= 1")
    _count = count


def get_num_threads() -> int:
    return _count


@contextmanager
def limit(count: int):
    """For the duration of a with-block: the conv layers on `count` threads and BLAS on one
    (see the module doc); then both as they were."""
    before = _count
    set_num_threads(count)
    try:
        with _one_blas_thread():
            yield
    finally:
        set_num_threads(before)


def groups(chunks: int) -> list[tuple[int, int]]:
    """Split chunks 0..chunks-1 into min(chunks, GROUPS) contiguous runs [first, stop), as even
    as possible (the first runs one longer)."""
    g = max(1, min(chunks, GROUPS))
    size, extra = divmod(chunks, g)
    out, first = [], 0
    for i in range(g):
        stop = first + size + (1 if i < extra else 0)
        out.append((first, stop))
        first = stop
    return out


def workers(tasks: int) -> int:
    """Threads a parallel region of `tasks` tasks will use (its worker indices are 0..k-1)."""
    return max(1, min(_count, tasks))


def _executor(size: int) -> ThreadPoolExecutor:
    """A pool of at least `size` threads, made in this process (a forked child cannot use its
    parent's pool: the threads behind it do not exist there)."""
    global _pool, _pool_key
    with _lock:
        pid = os.getpid()
        if _pool is None or _pool_key[0] != pid or _pool_key[1] < size:
            if _pool is not None and _pool_key[0] == pid:
                _pool.shutdown(wait=False)  # idle: its threads exit
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="distnn-nn")
            _pool_key = (pid, size)
        return _pool


@contextmanager
def _one_blas_thread():
    global _blas
    if _blas is None:
        _blas = ThreadpoolController().select(user_api="blas")
    with _blas.limit(limits=1):
        yield


def run(job: Callable[[int, int], None], tasks: Sequence[int]) -> None:
    """Call job(worker, task) for every task; worker w (0 <= w < workers(len(tasks))) takes
    tasks w, w + k, w + 2k, ... in order, so that it may use scratch buffers of its own. Worker
    0 is the calling thread. Returns when every task is done; re-raises the first error."""
    k = workers(len(tasks))
    if k == 1:
        for task in tasks:
            job(0, task)
        return

    def share(w: int) -> None:
        for task in tasks[w::k]:
            job(w, task)

    with _one_blas_thread():
        pool = _executor(k - 1)
        futures = [pool.submit(share, w) for w in range(1, k)]
        error = None
        try:
            share(0)
        except BaseException as exc:  # noqa: BLE001  wait for the others before raising
            error = exc
        for future in futures:
            try:
                future.result()
            except BaseException as exc:  # noqa: BLE001
                error = error or exc
        if error is not None:
            raise error
