"""The Communicator contract, written once and run on every backend.

Each check takes a communicator and asserts results computable from its rank and size alone, so
the same function runs in one process (tests/comm/test_local.py) and on every rank under
mpiexec (tests/comm/run_contract.py via tests/comm/test_mpi.py). A check that fails on one rank
raises there; under mpiexec the fail-fast hook then ends the job naming the rank.
"""

from __future__ import annotations

import numpy as np
import pytest


def _ranks(comm) -> np.ndarray:
    return np.arange(comm.size)


def check_identity(comm):
    assert isinstance(comm.name, str) and comm.name
    assert isinstance(comm.size, int) and comm.size >= 1
    assert isinstance(comm.rank, int) and 0 <= comm.rank < comm.size


def check_allreduce_sum(comm):
    for dtype in (np.float32, np.float64, np.int64, np.int32):
        # Shape (3, 5) exercises a non-flat buffer; values depend on rank and position.
        base = np.arange(15, dtype=dtype).reshape(3, 5)
        buf = base * (comm.rank + 1)
        out = comm.allreduce_(buf)
        assert out is buf, "allreduce_ must return its argument, reduced in place"
        assert out.dtype == dtype and out.shape == (3, 5)
        expected = base * sum(r + 1 for r in range(comm.size))
        np.testing.assert_array_equal(out, expected)
    # Fortran order is one block of memory too, reduced elementwise alike.
    fortran = np.asfortranarray(np.arange(6.0).reshape(2, 3)) * (comm.rank + 1)
    comm.allreduce_(fortran)
    np.testing.assert_array_equal(fortran, np.arange(6.0).reshape(2, 3) * sum(
        r + 1 for r in range(comm.size)))


def check_allreduce_large_float32(comm):
    # Big enough to use MPICH's large-message algorithms (several rounds, pipelining).
    n = 1_000_003
    buf = np.full(n, comm.rank + 0.5, dtype=np.float32)
    buf[-1] = comm.rank
    comm.allreduce_(buf)
    assert buf[0] == buf[n // 2] == np.float32(sum(r + 0.5 for r in range(comm.size)))
    assert buf[-1] == sum(range(comm.size))


def check_allreduce_max_min(comm):
    for dtype in (np.float32, np.float64, np.int64):
        v = np.array([comm.rank, -comm.rank, 7], dtype=dtype)
        comm.allreduce_(v, op="max")
        np.testing.assert_array_equal(v, np.array([comm.size - 1, 0, 7], dtype=dtype))
        v = np.array([comm.rank, -comm.rank, 7], dtype=dtype)
        comm.allreduce_(v, op="min")
        np.testing.assert_array_equal(v, np.array([0, -(comm.size - 1), 7], dtype=dtype))


def check_allreduce_view_in_place(comm):
    # Reducing a contiguous view must write through to its base (models reduce views of
    # one flat buffer).
    flat = np.zeros(10, dtype=np.float32)
    flat[2:6] = comm.rank + 1
    comm.allreduce_(flat[2:6])
    assert np.all(flat[2:6] == sum(r + 1 for r in range(comm.size)))
    assert np.all(flat[:2] == 0) and np.all(flat[6:] == 0)


def check_broadcast(comm):
    for root in sorted({0, comm.size - 1}):
        for dtype in (np.float32, np.float64, np.int64, np.bool_):
            buf = np.full((2, 3), comm.rank, dtype=dtype) if comm.rank == root else (
                np.full((2, 3), 99, dtype=dtype))
            out = comm.broadcast_(buf, root=root)
            assert out is buf
            np.testing.assert_array_equal(out, np.full((2, 3), root, dtype=dtype))


def check_broadcast_empty(comm):
    buf = np.empty(0, dtype=np.float32)
    assert comm.broadcast_(buf).size == 0


def check_allreduce_obj(comm):
    assert comm.allreduce_obj(comm.rank + 1) == sum(r + 1 for r in range(comm.size))
    out = comm.allreduce_obj((comm.rank, 0.5, 1), op="sum")
    assert out == (sum(range(comm.size)), 0.5 * comm.size, float(comm.size))
    assert isinstance(out, tuple) and all(isinstance(x, float) for x in out)
    ints = comm.allreduce_obj([comm.rank, 2])
    assert ints == [sum(range(comm.size)), 2 * comm.size] and all(type(x) is int for x in ints)
    assert comm.allreduce_obj(float(comm.rank), op="max") == float(comm.size - 1)
    assert comm.allreduce_obj((comm.rank, -comm.rank), op="min") == (0, -(comm.size - 1))
    # Flags: max = any rank set it, min = every rank set it.
    assert comm.allreduce_obj(comm.rank == comm.size - 1, op="max") == 1
    assert comm.allreduce_obj(comm.rank == 0, op="min") == (1 if comm.size == 1 else 0)
    # Integers beyond float64's 2**53 stay exact.
    assert comm.allreduce_obj(2**60 + comm.rank) == comm.size * 2**60 + sum(range(comm.size))


def check_bcast_obj(comm):
    for root in sorted({0, comm.size - 1}):
        mine = {"from": comm.rank, "path": "runs/x", "shape": (3, 4)}
        got = comm.bcast_obj(mine if comm.rank == root else None, root=root)
        assert got == {"from": root, "path": "runs/x", "shape": (3, 4)}
    assert comm.bcast_obj("" if comm.rank == 0 else "ignored") == ""
    assert comm.bcast_obj(None) is None


def check_barrier(comm):
    for _ in range(3):
        assert comm.barrier() is None


def check_iallreduce(comm):
    # Two channels in flight at once, blocking collectives in between: each gives its own sum.
    total = sum(r + 1 for r in range(comm.size))
    big = np.full(300_001, comm.rank + 1, dtype=np.float32)
    small = np.array([comm.rank, -comm.rank], dtype=np.int64)
    first = comm.iallreduce_(big)
    second = comm.iallreduce_(small, op="max", channel=2)
    again = np.full(1000, comm.rank + 1.0)
    third = comm.iallreduce_(again)  # channel 1 again: after `first`, in order
    meanwhile = np.array([comm.rank + 1.0])
    comm.allreduce_(meanwhile)
    assert comm.bcast_obj("x" if comm.rank == 0 else None) == "x"
    first.test()
    for request in (third, second, first):
        request.wait()
        assert request.test()
    assert meanwhile[0] == total
    assert np.all(big == total) and np.all(again == total)
    np.testing.assert_array_equal(small, [comm.size - 1, 0])
    for bad, message in ((0, "channel must be an int in"), (3, "channel must be an int in"),
                         (True, "channel must be an int in")):
        with pytest.raises(ValueError, match=message):
            comm.iallreduce_(np.zeros(3), channel=bad)
    with pytest.raises(ValueError, match="valid ops: sum, max, min"):
        comm.iallreduce_(np.zeros(3), op="mean")


def _codes_of(rank: int, n: int) -> np.ndarray:
    from distnn.train.compress import Codec
    rng = np.random.default_rng(rank)
    codes = np.zeros(n, np.uint16)
    Codec("bf16").encode((rng.standard_normal(n) * 1e-3).astype(np.float32), codes)
    return codes


def check_allreduce_coded(comm):
    # Chunk by chunk, by one rank each, read by all: the combination of every rank's codes
    # in rank order (bf16 codes summed in float32), as one rank would compute it whole.
    from distnn.train.compress import Codec
    combine = Codec("bf16").combine
    for n in (7, 1001, 300_001):  # inline / object-store sizes; chunks that do not divide
        mine = _codes_of(comm.rank, n)
        expected = np.zeros(n, np.uint16)
        combine([_codes_of(r, n) for r in range(comm.size)], expected)
        assert comm.allreduce_coded_(mine, combine) is mine
        np.testing.assert_array_equal(mine, expected)
        late = _codes_of(comm.rank, n)
        request = comm.iallreduce_coded_(late, combine)
        request.wait()
        np.testing.assert_array_equal(late, expected)


def check_bad_input_same_on_every_backend(comm):
    # Errors are raised before any communication, so every rank raises and nothing hangs.
    with pytest.raises(ValueError, match="valid ops: sum, max, min"):
        comm.allreduce_(np.zeros(3), op="mean")
    with pytest.raises(ValueError, match="not contiguous"):
        comm.allreduce_(np.zeros((4, 4), dtype=np.float32)[:, 1])
    with pytest.raises(TypeError, match="numpy.ndarray, got list"):
        comm.allreduce_([1.0, 2.0])
    with pytest.raises(TypeError, match="unsupported dtype"):
        comm.allreduce_(np.zeros(3, dtype=np.bool_))
    with pytest.raises(TypeError, match="unsupported dtype"):
        comm.broadcast_(np.zeros(3, dtype=">f4"))
    readonly = np.zeros(3)
    readonly.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        comm.broadcast_(readonly)
    with pytest.raises(ValueError, match=r"root must be an int rank in \[0, "):
        comm.broadcast_(np.zeros(3), root=comm.size)
    with pytest.raises(TypeError, match="allreduce_obj supports"):
        comm.allreduce_obj({"loss": 1.0})
    with pytest.raises(TypeError, match="allreduce_obj supports"):
        comm.allreduce_obj(())


CHECKS = [check_identity, check_allreduce_sum, check_allreduce_large_float32,
          check_allreduce_max_min, check_allreduce_view_in_place, check_broadcast,
          check_broadcast_empty, check_allreduce_obj, check_bcast_obj, check_barrier,
          check_iallreduce, check_allreduce_coded, check_bad_input_same_on_every_backend]
