"""The Communicator interface: the few collectives a data-parallel SPMD loop needs.

Every backend (local, mpi, ray) subclasses `Communicator`, sets `_rank`, `_size` and `timeout`,
and implements only the protected buffer operations `_allreduce`, `_broadcast`, `_barrier` plus
`abort`. The public methods here check their input first, identically for every backend, so a
program that runs with the local communicator does not meet a new error under mpiexec. The object
collectives are built on the buffer ones, so a backend's timeout and fail-fast behaviour cover
them too. What the waiting backends share lives here once as well: the timeout abort and the
spin-then-sleep wait loop (`wait_until`).
"""

from __future__ import annotations

import abc
import numbers
import os
import pickle
import time
from collections.abc import Callable
from typing import Any, NoReturn

import numpy as np

from distnn import console

OPS = ("sum", "max", "min")
# Non-blocking collectives run on channels 1..CHANNELS: each an ordering domain of its own (the
# blocking collectives are channel 0), so a bucket's allreduce in flight never meets a synced
# BatchNorm's allreduce of the main thread, and two kinds of bucket operation (the exact sum's
# max, then its sum) each keep their own order.
CHANNELS = 2

# combine(parts, out): out = the combination of `parts` (every rank's values of one chunk, in
# rank order), elementwise, so that any chunking gives the same result (allreduce_coded_).
Combine = Callable[[list[np.ndarray], np.ndarray], None]


def ufunc_combine(reduce: np.ufunc) -> Combine:
    """The Combine of a reduction ufunc: out = parts[0] reduce parts[1] reduce ..., in order."""
    def combine(parts: list[np.ndarray], out: np.ndarray) -> None:
        out[...] = parts[0]
        for part in parts[1:]:
            reduce(out, part, out=out)
    return combine

# Array kinds a reduction accepts (signed/unsigned int, float) and a broadcast accepts (plus bool
# and complex): sum/max/min over bools or complex numbers is not a well-defined MPI operation.
_REDUCE_KINDS = "iuf"
_BCAST_KINDS = "biufc"

# Why a wait spins first: MPICH advances a non-blocking collective only inside MPI calls, so every
# sleep between tests stalls the collective's current round (1 ms sleeps made a 1 M float32
# allreduce 6-16x slower), and a shared-memory peer's arrival is seen only when polled. Hence:
# spin, yielding the core, for SPIN_SECONDS (a balanced allreduce of a few MB takes about 1 ms
# here), then sleep a small fraction of the time already waited, capped: the extra latency once
# the late peer arrives stays around 1 % of the wait, and a long wait (a peer writing a
# checkpoint) costs little CPU.
SPIN_SECONDS = 0.02
SLEEP_FRACTION = 0.002
MAX_SLEEP_SECONDS = 0.001
# A wait that runs beside computation (a non-blocking collective's thread) never spins: the
# core belongs to the computation, and a little latency is hidden behind it anyway.
PATIENT_SLEEP_SECONDS = 0.0002


class Communicator(abc.ABC):
    """A group of `size` ranks running the same program (SPMD); this object is rank `rank`.

    Collectives must be called by every rank, in the same order, with the same shapes, dtypes,
    ops and roots. A rank that skips one leaves the others waiting (or, with a timeout, aborts).
    """

    name: str = "abstract"
    _rank: int  # set by every subclass's __init__
    _size: int
    timeout: float | None  # seconds a collective may wait before the job aborts; None: forever

    @property
    def rank(self) -> int:
        """This process's index, 0 <= rank < size."""
        return self._rank

    @property
    def size(self) -> int:
        """Number of ranks in the job."""
        return self._size

    @abc.abstractmethod
    def _allreduce(self, buf: np.ndarray, op: str) -> None:
        """Reduce `buf` in place across ranks; input already checked."""

    @abc.abstractmethod
    def _broadcast(self, buf: np.ndarray, root: int) -> None:
        """Overwrite `buf` with root's copy; input already checked."""

    @abc.abstractmethod
    def _barrier(self) -> None:
        """Block until every rank has entered the barrier."""

    @abc.abstractmethod
    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print `message` naming this rank to stderr and end the whole job (every rank) with exit
        status `code`. Not collective: one rank calling it is enough. Never returns."""

    def allreduce_(self, buf: np.ndarray, op: str = "sum") -> np.ndarray:
        """Replace `buf` on every rank by the elementwise `op` ("sum", "max", "min") over ranks.

        Collective: all ranks must call.
        buf: ndarray of any shape, contiguous, writeable, integer or float dtype in native byte
        order; the same shape and dtype on every rank. Returns `buf` itself (reduced in place).
        """
        check_op(op)
        check_array(buf, "allreduce_", _REDUCE_KINDS)
        self._allreduce(buf, op)
        return buf

    def broadcast_(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite `buf` on every rank with the contents of rank `root`'s `buf`.

        Collective: all ranks must call.
        buf: ndarray of any shape, contiguous, writeable, bool/int/float/complex dtype in native
        byte order; the same shape and dtype on every rank. Returns `buf` itself. The root may
        return before the others have received (MPI allows it for small messages).
        """
        self._check_root(root, "broadcast_")
        check_array(buf, "broadcast_", _BCAST_KINDS)
        self._broadcast(buf, root)
        return buf

    def iallreduce_(self, buf: np.ndarray, op: str = "sum", channel: int = 1) -> Request:
        """Start reducing `buf` in place across ranks (like allreduce_) and return at once; the
        result is in `buf` once the returned request's `wait()` has returned (or `test()` has
        said True). `buf` must not be touched in between.

        Collective: all ranks must start the same non-blocking collectives on a channel
        (1..CHANNELS) in the same order; channels are independent of each other and of the
        blocking collectives (which may run while these are in flight).
        """
        check_op(op)
        check_array(buf, "iallreduce_", _REDUCE_KINDS)
        if isinstance(channel, bool) or not isinstance(channel, int) or not (
                1 <= channel <= CHANNELS):
            raise ValueError(f"iallreduce_: channel must be an int in [1, {CHANNELS}], got "
                             f"{channel!r}")
        return self._iallreduce(buf, op, channel)

    def _iallreduce(self, buf: np.ndarray, op: str, channel: int) -> Request:
        """Default: the blocking collective, complete on return (no overlap). Backends that can
        overlap override it."""
        self._allreduce(buf, op)
        return DONE

    def allreduce_coded_(self, codes: np.ndarray, combine: Combine) -> np.ndarray:
        """Replace `codes` (e.g. the uint16 codes of 16-bit floats) on every rank by
        combine(every rank's codes, in rank order), chunk by chunk: each chunk is combined once,
        by one rank, and read by all (reduce-scatter + allgather), so every rank gets the same
        bits while moving about twice the codes' bytes. Returns `codes`.

        Collective: all ranks must call, with the same shape, dtype and combine."""
        check_array(codes, "allreduce_coded_", _REDUCE_KINDS)
        self._allreduce_coded(codes.reshape(-1, order="A"), combine)
        return codes

    def _allreduce_coded(self, flat: np.ndarray, combine: Combine) -> None:
        """Default, for one rank: combine its own codes."""
        assert self._size == 1, f"{type(self).__name__} needs its own _allreduce_coded"
        combine([flat.copy()], flat)

    def iallreduce_coded_(self, codes: np.ndarray, combine: Combine) -> Request:
        """allreduce_coded_, started and returned at once (see iallreduce_). It takes both
        channels: collectives started on them in between must be started by every rank in the
        same order relative to it, and a request must be tested or waited after the ones
        started before it (a request with two steps starts its second when tested).
        Collective."""
        check_array(codes, "iallreduce_coded_", _REDUCE_KINDS)
        return self._iallreduce_coded(codes.reshape(-1, order="A"), combine)

    def _iallreduce_coded(self, flat: np.ndarray, combine: Combine) -> Request:
        self._allreduce_coded(flat, combine)
        return DONE

    def barrier(self) -> None:
        """Return only once every rank has called barrier().

        Collective: all ranks must call.
        """
        self._barrier()

    def allreduce_obj(self, obj: Any, op: str = "sum") -> Any:
        """Reduce a small Python number, or a flat tuple/list of numbers, elementwise over ranks.

        Collective: all ranks must call, with the same container type and length.
        Supported: int, float, bool (counted as int: sum of flags = how many ranks set it,
        max = any, min = all) and NumPy scalars of those kinds. If every element is integral the
        reduction is exact in int64 and returns ints; otherwise it runs in float64 and returns
        floats. Returns a new object of the same container type (scalar, tuple or list).
        """
        check_op(op)
        arr, rebuild = pack_numbers(obj)
        self._allreduce(arr, op)
        return rebuild(arr)

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Return rank `root`'s `obj` on every rank (other ranks' `obj` is ignored, e.g. None).

        Collective: all ranks must call.
        obj: any picklable object; meant for small ones (configs, decisions, metadata). Arrays
        belong in broadcast_. The root gets its own object back, the others an unpickled copy;
        the root may return before the others have received.
        """
        self._check_root(root, "bcast_obj")
        # Two buffer broadcasts (length, then bytes) instead of a backend's pickling bcast, so
        # the backend's timeout covers this path too.
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL) if self.rank == root else b""
        length = np.array([len(payload)], dtype=np.int64)
        self._broadcast(length, root)
        data = np.frombuffer(payload, dtype=np.uint8).copy() if self.rank == root else (
            np.empty(int(length[0]), dtype=np.uint8))
        if data.size:
            self._broadcast(data, root)
        return obj if self.rank == root else pickle.loads(data.tobytes())

    def _check_root(self, root: object, what: str) -> None:
        if isinstance(root, bool) or not isinstance(root, numbers.Integral) or not (
                0 <= int(root) < self.size):
            raise ValueError(f"{what}: root must be an int rank in [0, {self.size}), got {root!r}")

    def _print_abort(self, message: str) -> None:
        """Print an abort's `message` to stderr, naming this rank (the first half of `abort`)."""
        console.err(f"distnn: rank {self.rank} of {self.size}: {message}")

    def _abort_timeout(self, what: str, buf: np.ndarray | None) -> NoReturn:
        """Abort the job: collective `what` (on `buf`, None for a barrier) waited past timeout."""
        subject = what if buf is None else f"{what} of {buf.size} {buf.dtype}"
        self.abort(f"{subject} did not complete within {self.timeout:g} s on rank {self.rank}: "
                   "a peer rank is dead or stuck (or needs longer: raise comm.timeout)")

    def _timeout_check(self, what: str, buf: np.ndarray | None) -> Callable[[float], None]:
        """The `check` for `wait_until` inside collective `what`: aborts past the timeout."""
        def check(waited: float) -> None:
            if self.timeout is not None and waited > self.timeout:
                self._abort_timeout(what, buf)
        return check

    def __repr__(self) -> str:
        return f"<{type(self).__name__} name={self.name!r} rank={self.rank} size={self.size}>"


class Request:
    """A non-blocking collective in flight (Communicator.iallreduce_)."""

    def test(self) -> bool:
        """Advance the collective if the backend needs it; True once it is complete."""
        return True

    def wait(self) -> None:
        """Return once the collective is complete (or end the job past the timeout)."""


DONE = Request()  # a collective that completed before it was returned


def wait_until(done: Callable[[], bool], check: Callable[[float], None],
               patient: bool = False) -> None:
    """Poll `done()` until it is true, calling `check(seconds waited)` between polls (it may end
    the job, e.g. `Communicator._timeout_check`). Spins at first, then sleeps (see SPIN_SECONDS);
    `patient`: sleeps from the start (PATIENT_SLEEP_SECONDS)."""
    start = time.monotonic()
    while not done():
        waited = time.monotonic() - start
        check(waited)
        if patient:
            time.sleep(PATIENT_SLEEP_SECONDS)
        elif waited > SPIN_SECONDS:
            time.sleep(min(MAX_SLEEP_SECONDS, waited * SLEEP_FRACTION))
        else:
            # Free when each rank has a core; with more ranks than cores the rank holding
            # the core would otherwise spin while the peer it waits for cannot run.
            os.sched_yield()


def check_op(op: object) -> None:
    """Raise ValueError unless `op` is one of OPS."""
    if op not in OPS:
        raise ValueError(f"unknown reduction op {op!r}; valid ops: {', '.join(OPS)}")


def check_array(buf: object, what: str, kinds: str) -> None:
    """Raise TypeError/ValueError, naming the bad property, unless `buf` can be sent in place."""
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{what}: buf must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.dtype.kind not in kinds or not buf.dtype.isnative:
        raise TypeError(f"{what}: unsupported dtype {buf.dtype.str!r} (kind {buf.dtype.kind!r}); "
                        f"need a native-byte-order dtype of kind {' / '.join(kinds)}")
    # One block of memory is what an MPI buffer is: a strided view would be silently misread.
    if not (buf.flags.c_contiguous or buf.flags.f_contiguous):
        raise ValueError(f"{what}: buf is not contiguous (shape {buf.shape}, strides "
                         f"{buf.strides}); reduce a np.ascontiguousarray copy and copy it back")
    if not buf.flags.writeable:
        raise ValueError(f"{what}: buf is read-only (shape {buf.shape}); the result is written "
                         "into it in place, pass a writeable array")


def pack_numbers(obj: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """Turn a number or flat tuple/list of numbers into (array, rebuild) for a buffer reduction.

    The array is int64 if every element is integral (bools count), else float64; `rebuild(arr)`
    gives back the same container type holding Python ints or floats.
    """
    items = obj if isinstance(obj, (tuple, list)) else (obj,)
    bad = [x for x in items if not isinstance(x, (numbers.Real, np.bool_))]
    if bad or not items:
        raise TypeError(f"allreduce_obj supports a number or a non-empty flat tuple/list of "
                        f"numbers (int, float, bool); got {obj!r}")
    integral = all(isinstance(x, (numbers.Integral, np.bool_)) for x in items)
    dtype, convert = (np.int64, int) if integral else (np.float64, float)
    arr = np.array([convert(x) for x in items], dtype=dtype)

    def rebuild(out: np.ndarray) -> Any:
        values = [convert(v) for v in out.tolist()]
        if isinstance(obj, tuple):
            return tuple(values)
        return values if isinstance(obj, list) else values[0]

    return arr, rebuild


def check_timeout(timeout: object) -> float | None:
    """Validate a collective timeout in seconds: None (wait forever) or a positive number."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not float(timeout) > 0:
        raise ValueError(f"timeout must be a positive number of seconds or None (no timeout), "
                         f"got {timeout!r}")
    return float(timeout)


def failed_ranks(comm: Communicator, failed: bool) -> list[int]:
    """The ranks on which `failed` is true, in rank order: the same list on every rank, so
    that every rank takes the same way on (a bad input seen by some ranks only ends them all).
    Collective: every rank must call."""
    flags = comm.allreduce_obj([int(r == comm.rank and failed) for r in range(comm.size)])
    return [r for r, flag in enumerate(flags) if flag]
