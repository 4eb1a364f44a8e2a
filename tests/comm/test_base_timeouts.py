"""What every waiting backend shares (comm/base.py): the spin-then-sleep loop `wait_until`, the
timeout `check` it calls, the one-line abort message of a collective that waited too long, and
how an abort names the rank (with the local communicator's abort).

No test sleeps or depends on timing: `wait_until` runs on a fake clock (base.time / base.os are
replaced), and `abort` is replaced by one that raises instead of ending the process.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from distnn.comm import base
from distnn.comm import local as local_module
from distnn.comm.base import Communicator
from distnn.comm.local import LocalCommunicator

# The documented tail of every timeout abort (comm/base.py `_abort_timeout`).
HINT = "a peer rank is dead or stuck (or needs longer: raise comm.timeout)"


class Aborted(Exception):
    """Raised by FakeComm.abort in place of ending the job."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.message, self.code = message, code


class FakeComm(Communicator):
    """Rank `rank` of `size`, waiting at most `timeout` s; abort raises Aborted."""

    name = "fake"

    def __init__(self, rank: int = 2, size: int = 4, timeout: float | None = 2.5):
        self._rank, self._size, self.timeout = rank, size, timeout

    def _allreduce(self, buf, op):
        raise AssertionError("not used")

    def _broadcast(self, buf, root):
        raise AssertionError("not used")

    def _barrier(self):
        raise AssertionError("not used")

    def abort(self, message, code=1):
        raise Aborted(message, code)


class FakeClock:
    """monotonic() returns the given times in turn; sleep and sched_yield are recorded, in
    order with the `check` calls, in `events`."""

    def __init__(self, times):
        self.times = iter(times)
        self.events: list[tuple] = []

    def monotonic(self) -> float:
        return next(self.times)

    def sleep(self, seconds) -> None:
        self.events.append(("sleep", seconds))

    def sched_yield(self) -> None:
        self.events.append(("yield",))

    def check(self, waited) -> None:
        self.events.append(("check", waited))


@pytest.fixture
def clock_at(monkeypatch):
    def install(times) -> FakeClock:
        clock = FakeClock(times)
        monkeypatch.setattr(base, "time", SimpleNamespace(monotonic=clock.monotonic,
                                                          sleep=clock.sleep))
        monkeypatch.setattr(base, "os", SimpleNamespace(sched_yield=clock.sched_yield))
        return clock
    return install


def done_after(polls: int):
    """A done() that is false for `polls` calls, then true; .calls counts every call."""
    def done() -> bool:
        done.calls += 1
        return done.calls > polls
    done.calls = 0
    return done


# -- wait_until ------------------------------------------------------------------------------------
def test_wait_until_returns_at_once_when_already_done(clock_at):
    clock = clock_at([7.0])  # one reading: the start
    done = done_after(0)
    base.wait_until(done, clock.check)
    assert done.calls == 1 and clock.events == []


def test_wait_until_spins_then_sleeps_a_capped_fraction_of_the_wait(clock_at):
    # start 0.02, then polls at 0.03, 0.04, 0.27 and 10.02 (waited 0.01, 0.02, 0.25, 10).
    # 0.04 - 0.02 is exactly 0.02 (= SPIN_SECONDS): not past it, so still a yield.
    assert 0.04 - 0.02 == 0.02
    clock = clock_at([0.02, 0.03, 0.04, 0.27, 10.02])
    done = done_after(4)
    base.wait_until(done, clock.check)
    assert done.calls == 5
    kinds = [e[0] for e in clock.events]
    assert kinds == ["check", "yield", "check", "yield", "check", "sleep", "check", "sleep"]
    waits = [e[1] for e in clock.events if e[0] == "check"]
    assert waits == pytest.approx([0.01, 0.02, 0.25, 10.0], abs=1e-12)
    assert waits[1] == 0.02
    # Sleeps: 0.2 % of the time waited (0.25 s -> 0.5 ms), at most 1 ms (10 s -> 1 ms, not 20).
    sleeps = [e[1] for e in clock.events if e[0] == "sleep"]
    assert sleeps == pytest.approx([0.0005, 0.001], abs=1e-12)


# -- the timeout check -----------------------------------------------------------------------------
def test_no_timeout_never_aborts():
    check = FakeComm(timeout=None)._timeout_check("allreduce_", np.zeros(3))
    for waited in (0.0, 2.5, 1e9):
        check(waited)


def test_timeout_aborts_only_past_the_limit():
    buf = np.zeros(6, np.float32)
    check = FakeComm(rank=2, timeout=2.5)._timeout_check("allreduce_", buf)
    check(1.0)
    check(2.5)  # exactly the limit: not past it
    with pytest.raises(Aborted) as info:
        check(2.5000001)
    assert info.value.message == (
        f"allreduce_ of 6 float32 did not complete within 2.5 s on rank 2: {HINT}")
    assert info.value.code == 1


def test_abort_message_of_a_buffer_collective_and_of_a_barrier():
    comm = FakeComm(rank=3, timeout=30.0)
    with pytest.raises(Aborted) as info:
        comm._abort_timeout("broadcast_", np.zeros((2, 5), np.int64))
    assert info.value.message == (
        f"broadcast_ of 10 int64 did not complete within 30 s on rank 3: {HINT}")
    with pytest.raises(Aborted) as info:
        comm._abort_timeout("barrier", None)
    assert info.value.message == f"barrier did not complete within 30 s on rank 3: {HINT}"


def test_wait_until_past_the_timeout_aborts_with_the_message(clock_at):
    # The loop of every waiting backend: a peer never arrives; the check ends it past 2.5 s.
    clock = clock_at([100.0, 100.5, 101.5, 102.5, 103.5, 104.5])
    comm = FakeComm(rank=1, size=2, timeout=2.5)
    check = comm._timeout_check("allreduce_", np.zeros(4, np.float64))
    with pytest.raises(Aborted) as info:
        base.wait_until(done_after(10 ** 6), check)
    assert info.value.message == (
        f"allreduce_ of 4 float64 did not complete within 2.5 s on rank 1: {HINT}")
    # Polled at 0.5, 1.5, 2.5 (not past the limit) and aborted at 3.5: one reading left.
    assert clock.monotonic() == 104.5


# -- how an abort is printed ---------------------------------------------------------------------
def test_print_abort_names_the_rank_on_stderr(capsys):
    FakeComm(rank=2, size=4)._print_abort("the loss is NaN")
    out = capsys.readouterr()
    assert out.err == "distnn: rank 2 of 4: the loss is NaN\n" and out.out == ""


def test_local_abort_prints_then_exits_with_status_1_by_default(monkeypatch, capsys):
    exits = []

    def fake_exit(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(local_module, "flush_and_exit", fake_exit)
    comm = LocalCommunicator()
    with pytest.raises(SystemExit):
        comm.abort("gave up")
    with pytest.raises(SystemExit):
        comm.abort("gave up again", code=3)
    assert exits == [1, 3]
    out = capsys.readouterr()
    assert out.err == "distnn: rank 0 of 1: gave up\ndistnn: rank 0 of 1: gave up again\n"
    assert out.out == ""


# -- pack_numbers: the buffer of allreduce_obj -----------------------------------------------------
def test_pack_numbers_is_int64_for_integers_and_float64_otherwise():
    arr, rebuild = base.pack_numbers((3, True, np.int32(-2)))
    assert arr.dtype == np.int64 and arr.tolist() == [3, 1, -2]
    assert rebuild(arr) == (3, 1, -2)
    arr, rebuild = base.pack_numbers([1, 0.5])
    assert arr.dtype == np.float64 and rebuild(arr) == [1.0, 0.5]


def test_an_integer_beyond_int64_is_refused_not_reduced_in_another_type():
    # The reduction of integers is exact in int64 on every rank; 2**63 does not fit, and must
    # not turn the buffer into uint64 (or object) on this rank alone.
    with pytest.raises(OverflowError):
        base.pack_numbers(2 ** 63)
    with pytest.raises(OverflowError):
        LocalCommunicator().allreduce_obj([1, 2 ** 63])
    assert LocalCommunicator().allreduce_obj([1, 2 ** 63 - 1]) == [1, 2 ** 63 - 1]
