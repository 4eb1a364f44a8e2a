"""The one thread pool behind threads.run: made per process, of the size asked for, reused while
it is large enough, replaced (the idle old one shut down, without waiting) when a region needs
more threads, and never touched when it belongs to another process (a forked child's copy of its
parent's pool has no threads behind it).

The checks look at the pool itself (identity, size, thread names, whether it still takes work),
so a broken pool fails them instead of hanging; no test depends on timing.
"""

import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from distnn.nn import threads


@pytest.fixture
def no_pool(monkeypatch):
    """Start from no pool (as a fresh process does); the module's own pool is put back after,
    and every pool made here is shut down."""
    monkeypatch.setattr(threads, "_pool", None)
    monkeypatch.setattr(threads, "_pool_key", (0, 0))
    made = []
    real = ThreadPoolExecutor

    def tracked(*args, **kwargs):
        pool = real(*args, **kwargs)
        made.append(pool)
        return pool

    monkeypatch.setattr(threads, "ThreadPoolExecutor", tracked)
    yield made
    for pool in made:
        pool.shutdown(wait=True)


def takes_work(pool) -> bool:
    try:
        return pool.submit(lambda: 42).result() == 42
    except RuntimeError:  # "cannot schedule new futures after shutdown"
        return False


def test_the_pool_has_the_size_asked_for_and_is_reused_while_large_enough(no_pool):
    pool = threads._executor(2)
    assert pool._max_workers == 2
    assert threads._pool_key == (os.getpid(), 2)
    assert threads._executor(2) is pool  # the same size: reused
    assert threads._executor(1) is pool  # smaller: reused
    assert len(no_pool) == 1
    assert takes_work(pool)


def test_a_larger_request_replaces_the_pool_and_shuts_the_old_one_down(no_pool):
    old = threads._executor(1)
    new = threads._executor(3)
    assert new is not old
    assert new._max_workers == 3
    assert threads._pool_key == (os.getpid(), 3)
    assert not takes_work(old)  # shut down: its threads exit
    assert takes_work(new)
    assert threads._executor(2) is new


def test_a_pool_of_another_process_is_replaced_and_left_alone(no_pool):
    """After a fork the child inherits the parent's pool object (and its key) but none of its
    threads: the child makes its own pool, whatever the recorded size, and does not shut the
    inherited one down (its lock may be held by a thread that does not exist in the child)."""
    inherited = ThreadPoolExecutor(max_workers=8)
    try:
        threads._pool, threads._pool_key = inherited, (os.getpid() + 1, 8)
        pool = threads._executor(2)
        assert pool is not inherited
        assert pool._max_workers == 2
        assert threads._pool_key == (os.getpid(), 2)
        assert takes_work(inherited)  # not shut down
        assert threads._executor(2) is pool
    finally:
        inherited.shutdown(wait=True)


def test_pool_threads_are_named_distnn_nn(no_pool):
    names = []
    lock = threading.Lock()

    def job(worker, task):
        with lock:
            names.append((worker, threading.current_thread().name))

    with threads.limit(3):
        threads.run(job, range(6))
    helpers = {name for worker, name in names if worker != 0}
    assert helpers and all(re.fullmatch(r"distnn-nn_\d+", name) for name in helpers), helpers
    assert threads._pool_key == (os.getpid(), 2)  # worker 0 is the caller: 2 pool threads
    assert threads._pool._max_workers == 2


def test_replacing_the_pool_does_not_wait_for_work_still_running_on_the_old_one(no_pool):
    """Another thread's region may still run on the old pool when a larger one is made: the old
    pool is shut down without waiting (its work completes), so the request returns at once.
    The busy task only returns True if it was released by the code after the request returned;
    were the request to wait for it, it would time out and return False."""
    old = threads._executor(1)
    started, release = threading.Event(), threading.Event()

    def busy():
        started.set()
        return release.wait(timeout=20)

    future = old.submit(busy)
    assert started.wait(timeout=60)
    new = threads._executor(2)
    release.set()
    assert future.result(timeout=60) is True  # finished normally, after the request returned
    assert new is not old and new._max_workers == 2
    assert not takes_work(old)
