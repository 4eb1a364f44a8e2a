"""distnn.nn.threads: the pool the conv layers run their chunks on."""

import multiprocessing
import threading
from itertools import pairwise

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from distnn.nn import threads


def blas_threads() -> int:
    return min(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_every_task_runs_once_on_its_worker():
    seen = []
    lock = threading.Lock()

    def job(worker, task):
        with lock:
            seen.append((worker, task, threading.get_ident(), blas_threads()))

    with threads.limit(3):
        assert threads.workers(10) == 3 and threads.workers(2) == 2
        threads.run(job, range(10))
    assert sorted(task for _, task, _, _ in seen) == list(range(10))
    for worker, task, _, blas in seen:
        assert worker == task % 3  # worker w takes tasks w, w + 3, ...
        assert blas == 1  # BLAS on one thread inside the region
    idents = {worker: {ident for w, _, ident, _ in seen if w == worker} for worker in range(3)}
    assert all(len(v) == 1 for v in idents.values())
    assert len(set().union(*idents.values())) == 3  # three threads
    assert idents[0] == {threading.get_ident()}  # worker 0 is the caller


def test_one_thread_runs_in_the_caller_in_order():
    seen = []
    threads.run(lambda w, t: seen.append((w, t, threading.get_ident())), range(4))
    assert seen == [(0, t, threading.get_ident()) for t in range(4)]


def test_an_error_in_a_worker_reaches_the_caller_after_the_others_finish():
    done = []

    def job(worker, task):
        if task == 1:
            raise RuntimeError("task 1 failed")
        done.append(task)

    with threads.limit(2), pytest.raises(RuntimeError, match="task 1 failed"):
        threads.run(job, range(6))
    assert sorted(done) == [0, 2, 4]  # worker 0 finished its share; worker 1 stopped at task 1
    with threads.limit(2):  # the pool still works afterwards
        threads.run(lambda w, t: done.append(10 + t), range(2))
    assert sorted(done)[-2:] == [10, 11]


def test_limit_sets_and_restores_the_count_and_blas():
    with threadpool_limits(2):
        assert threads.get_num_threads() == 1
        with threads.limit(4):
            assert threads.get_num_threads() == 4 and blas_threads() == 1
        assert threads.get_num_threads() == 1 and blas_threads() == 2


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_bad_thread_count(bad):
    with pytest.raises(ValueError, match=f"threads: {bad!r}, expected an integer >= 1"):
        threads.set_num_threads(bad)
    assert threads.get_num_threads() == 1


@pytest.mark.parametrize("chunks", [1, 2, 15, 16, 17, 40, 128])
def test_groups_split_chunks_evenly(chunks):
    groups = threads.groups(chunks)
    assert len(groups) == min(chunks, threads.GROUPS)
    assert groups[0][0] == 0 and groups[-1][1] == chunks
    assert all(a[1] == b[0] for a, b in pairwise(groups))
    sizes = [stop - first for first, stop in groups]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


def _child_sum(_):
    with threads.limit(2):
        out = np.zeros(4)
        threads.run(lambda w, t: out.__setitem__(t, t + 1), range(4))
    return out.sum()


def test_a_forked_child_gets_a_pool_of_its_own():
    with threads.limit(2):  # the parent's pool exists before the fork
        threads.run(lambda w, t: None, range(2))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        assert pool.map_async(_child_sum, [0]).get(timeout=60) == [10.0]
