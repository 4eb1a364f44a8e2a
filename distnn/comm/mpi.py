"""MPI communicator on mpi4py's buffer API (uppercase methods: no pickling of arrays).

Importing this module imports mpi4py, which initialises MPI; `create_communicator("mpi")` does
that only when the MPI backend is chosen.

Timeouts: with `timeout=None` the collectives are the blocking `Allreduce`/`Bcast`/`Barrier`.
With a timeout they are the non-blocking `Iallreduce`/`Ibcast`/`Ibarrier`, completed by a
polling loop that aborts the job naming the operation once the deadline passes. The loop spins
on `Test()` at first (as fast as the blocking call: tests/comm/bench_allreduce.py), then sleeps
briefly between tests when a peer is long late (see `wait_until` in comm/base.py).
"""

from __future__ import annotations

from typing import NoReturn

import numpy as np
from mpi4py import MPI

from distnn.comm.base import (
    CHANNELS,
    Combine,
    Communicator,
    Request,
    check_timeout,
    wait_until,
)
from distnn.comm.failfast import drain_stdio, flush_and_exit

_MPI_OPS = {"sum": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}


class MPICommunicator(Communicator):
    """All ranks of MPI.COMM_WORLD.

    timeout: seconds any single collective may wait before the job is aborted with a message
    naming the operation and the rank; None waits forever (blocking MPI calls).
    """

    name = "mpi"

    def __init__(self, timeout: float | None = None):
        self.timeout = check_timeout(timeout)
        self._comm = MPI.COMM_WORLD
        self._rank = self._comm.Get_rank()
        self._size = self._comm.Get_size()
        # The channels of the non-blocking collectives: duplicates of COMM_WORLD, made here
        # (MPI_Comm_dup is collective) where every rank builds its communicator.
        self._channels = [self._comm.Dup() for _ in range(CHANNELS)]

    def _iallreduce(self, buf: np.ndarray, op: str, channel: int) -> Request:
        """MPI_Iallreduce on the channel's communicator. MPICH advances it only inside MPI
        calls: the caller's test() between layers and wait() at the end do that."""
        request = self._channels[channel - 1].Iallreduce(MPI.IN_PLACE, buf, _MPI_OPS[op])
        return _MPIRequest(request, self._timeout_check("iallreduce_", buf))

    def _allreduce(self, buf: np.ndarray, op: str) -> None:
        if self.timeout is None:
            self._comm.Allreduce(MPI.IN_PLACE, buf, _MPI_OPS[op])
        else:
            request = self._comm.Iallreduce(MPI.IN_PLACE, buf, _MPI_OPS[op])
            self._wait(request, "allreduce_", buf)

    def _allreduce_coded(self, flat: np.ndarray, combine: Combine) -> None:
        _CodedRequest(self._comm, self._comm, self._size, flat, combine,
                      self._timeout_check("allreduce_coded_", flat)).wait()

    def _iallreduce_coded(self, flat: np.ndarray, combine: Combine) -> Request:
        """MPI_Ialltoall on channel 1, then (once tested complete) MPI_Iallgather on channel 2."""
        return _CodedRequest(self._channels[0], self._channels[1], self._size, flat, combine,
                             self._timeout_check("iallreduce_coded_", flat))

    def _broadcast(self, buf: np.ndarray, root: int) -> None:
        if self.timeout is None:
            self._comm.Bcast(buf, root)
        else:
            self._wait(self._comm.Ibcast(buf, root), "broadcast_", buf)

    def _barrier(self) -> None:
        if self.timeout is None:
            self._comm.Barrier()
        else:
            self._wait(self._comm.Ibarrier(), "barrier", None)

    def _wait(self, request: MPI.Request, what: str, buf: np.ndarray | None) -> None:
        """Complete `request` or abort the job once `self.timeout` seconds have passed."""
        wait_until(request.Test, self._timeout_check(what, buf))

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print `message` naming this rank to stderr, then MPI_Abort(COMM_WORLD, code): the
        launcher kills every rank and mpiexec exits non-zero. Not collective; never returns."""
        self._print_abort(message)
        drain_stdio()  # else the launcher may kill us before forwarding this message
        MPI.COMM_WORLD.Abort(code)
        flush_and_exit(code)  # not reached: Abort does not return


class _MPIRequest(Request):
    def __init__(self, request: MPI.Request, check):
        self._request, self._check, self._done = request, check, False

    def test(self) -> bool:
        if not self._done:
            self._done = bool(self._request.Test())
        return self._done

    def wait(self) -> None:
        wait_until(self.test, self._check)


class _CodedRequest(Request):
    """allreduce_coded_ as two non-blocking steps: an alltoall gives this rank chunk `rank` of
    every rank's codes (padded to equal chunks), it combines them, an allgather gives every
    rank every combined chunk. test() starts the second step once the first is complete."""

    def __init__(self, first: MPI.Intracomm, second: MPI.Intracomm, size: int,
                 flat: np.ndarray, combine: Combine, check):
        self._second, self._flat, self._combine, self._check = second, flat, combine, check
        self._per = -(-flat.size // size)
        self._send = np.zeros(self._per * size, flat.dtype)
        self._send[:flat.size] = flat
        self._recv = np.empty_like(self._send)
        self._mine = np.empty(self._per, flat.dtype)
        self._request = first.Ialltoall(self._send, self._recv)
        self._phase = 0

    def test(self) -> bool:
        if self._phase == 0 and self._request.Test():
            per = self._per
            parts = [self._recv[j * per:(j + 1) * per] for j in range(len(self._recv) // per)]
            self._combine(parts, self._mine)
            self._request = self._second.Iallgather(self._mine, self._send)
            self._phase = 1
        if self._phase == 1 and self._request.Test():
            self._flat[...] = self._send[:self._flat.size]
            self._phase = 2
        return self._phase == 2

    def wait(self) -> None:
        wait_until(self.test, self._check)
