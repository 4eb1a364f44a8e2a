"""POSIX shared-memory collectives for the ranks of a Ray group on one node (comm/ray.py
chooses them with transport "shm", or "auto" when every rank is on one x86-64 node).
Plain numpy and multiprocessing.shared_memory: nothing here imports ray."""

from __future__ import annotations

import contextlib
import glob
import os
from collections.abc import Callable
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory

import numpy as np

from distnn.comm.base import Combine, wait_until

# Shared-memory segments are /dev/shm/<prefix><group id>_<rank>_<n>: whoever ends a group
# (the launcher, a test) removes what is left with `rendezvous.release_segments`, since actors
# that are killed cannot clean up after themselves.
SEGMENT_PREFIX = "distnn_"

Check = Callable[[float], None]  # called with the seconds waited so far; may end the job


def unlink_segments(gid: str) -> int:
    """Remove every segment of group `gid` left on this machine; returns how many."""
    removed = 0
    for path in glob.glob(f"/dev/shm/{SEGMENT_PREFIX}{gid}_*"):
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


class SharedMemoryTransport:
    """Collectives through POSIX shared memory for ranks on one (x86-64) node: no Ray call on
    the data path, like MPI's shared-memory channel.

    Each rank owns a control block (a counter: how many synchronisation points it has passed)
    and a data segment of four regions of `cap` bytes (cap: the largest buffer so far, the same
    on every rank since collectives match; a bigger buffer makes every rank create a new
    segment, generation `gen`, at the same collective): A (allreduce input), B (the reduced
    chunk it owns), C0/C1 (small allreduces and broadcasts, alternating by collective count).
    `_sync` = bump my counter, wait until every rank's counter has caught up.

      allreduce, large: write my buffer to A, sync, reduce chunk `rank` of every rank's A (rank
        order, buffer dtype) into my B, sync, copy every rank's reduced chunk from its B.
        Each rank moves O(buffer) bytes whatever the number of ranks.
      allreduce, small: write C[k % 2], sync, reduce every rank's C in rank order.
      broadcast: root writes C[k % 2], sync, the others copy it.
    No region is overwritten while a peer may still read it: A is read only before the second
    sync of its collective; B is written only after the first sync of a collective, which
    every rank passes only once done reading the previous B; a C region is reused two
    collectives later, after a sync every reader passed once done with it.
    """

    A, B, C = 0, 1, 2

    def __init__(self, rank: int, size: int, gid: str, small_bytes: int,
                 patient: bool = False):
        self.rank, self.size, self.gid = rank, size, gid
        self.patient = patient  # waits sleep at once (comm/base.py wait_until)
        self.small_bytes = small_bytes  # allreduces up to this size: the small form
        self.ctl: SharedMemory | None = SharedMemory(name=self._name(rank, "ctl"), create=True,
                                                     size=64)
        # Every rank's counter, in rank order, once attach_controls has run; only mine before.
        self.controls = [np.ndarray((1,), dtype=np.int64, buffer=self.ctl.buf)]
        self.controls[0][0] = 0
        self.peer_ctl: list[SharedMemory] = []
        self.seq = 0
        self.mine: SharedMemory | None = None  # my data segment
        self.cap, self.gen, self.count = 0, 0, 0
        self.segs: list[SharedMemory] = []  # every rank's segment of generation gen (mine too)
        self.retired: list[SharedMemory] = []  # my older segments, unlinked once peers are done

    def _name(self, rank: int, what: int | str) -> str:
        return f"{SEGMENT_PREFIX}{self.gid}_{rank}_{what}"

    @staticmethod
    def _attach(name: str) -> SharedMemory:
        seg = SharedMemory(name=name)
        # Python < 3.13 registers attached segments too and would unlink them when this
        # process exits: only the owner (or release_segments) should. `_name` (the registered
        # name, leading slash included) is private, hence read through vars().
        with contextlib.suppress(Exception):
            resource_tracker.unregister(vars(seg)["_name"], "shared_memory")
        return seg

    def attach_controls(self) -> None:
        """Map every peer's control block (each rank created its own before calling this)."""
        mine = self.controls[0]
        counters = []
        for r in range(self.size):
            if r == self.rank:
                counters.append(mine)
            else:
                seg = self._attach(self._name(r, "ctl"))
                self.peer_ctl.append(seg)
                counters.append(np.ndarray((1,), dtype=np.int64, buffer=seg.buf))
        self.controls = counters

    def _sync(self, check: Check) -> None:
        """Pass a synchronisation point: every rank's writes before it are visible after it."""
        self.seq += 1
        seq = self.seq
        controls = self.controls
        controls[self.rank][0] = seq
        # Counters only grow: a rank seen caught up stays so while the others are re-read.
        wait_until(lambda: all(c[0] >= seq for c in controls), check, self.patient)
        while self.retired:  # every rank has left the collective that used them
            self._release(self.retired.pop())

    def _begin(self, nbytes: int) -> SharedMemory:
        """Start a collective on `nbytes`: grow my segment (a new generation) if needed; returns
        my segment."""
        self.count += 1
        if self.mine is None or nbytes > self.cap:
            old = self.mine
            self.cap = max(nbytes, 64)
            self.gen += 1
            self.mine = SharedMemory(name=self._name(self.rank, self.gen), create=True,
                                     size=4 * self.cap)
            if old is not None:
                # A peer may not have attached it yet (it reads the previous collective's
                # data after that collective's last sync): unlink after the next sync.
                self.retired.append(old)
            self.segs = []  # the peers' new segments exist once the next sync has passed
        return self.mine

    def _peers(self, mine: SharedMemory) -> list[SharedMemory]:
        """Every rank's data segment of this generation (`mine` at my rank): after a sync."""
        if len(self.segs) != self.size:
            for seg in self.segs:
                if seg is not mine:
                    self._close(seg)
            self.segs = [mine if r == self.rank else self._attach(self._name(r, self.gen))
                         for r in range(self.size)]
        return self.segs

    @staticmethod
    def _close(seg: SharedMemory) -> None:
        with contextlib.suppress(BufferError):  # a view still alive: garbage collection closes it
            seg.close()

    @classmethod
    def _release(cls, seg: SharedMemory) -> None:
        """Close and unlink a segment of mine."""
        cls._close(seg)
        with contextlib.suppress(FileNotFoundError):
            seg.unlink()

    def _view(self, seg: SharedMemory, region: int, flat: np.ndarray) -> np.ndarray:
        return np.ndarray(flat.shape, dtype=flat.dtype, buffer=seg.buf, offset=region * self.cap)

    def allreduce(self, flat: np.ndarray, combine: Combine, check: Check) -> None:
        """Replace `flat` by combine(every rank's `flat`, rank order) (comm/base.py).
        Collective: all ranks must call."""
        mine = self._begin(flat.nbytes)
        if flat.nbytes <= self.small_bytes:
            region = self.C + self.count % 2
            self._view(mine, region, flat)[...] = flat
            self._sync(check)
            segs = self._peers(mine)
            acc = np.empty_like(flat)  # rank order, in the buffer's dtype: the same everywhere
            combine([self._view(seg, region, flat) for seg in segs], acc)
            flat[...] = acc
            return
        bounds = np.linspace(0, flat.size, self.size + 1).astype(np.int64)
        self._view(mine, self.A, flat)[...] = flat
        self._sync(check)
        segs = self._peers(mine)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        acc = self._view(mine, self.B, flat)[lo:hi]
        # Rank order, in the buffer's dtype: the same on every rank.
        combine([self._view(seg, self.A, flat)[lo:hi] for seg in segs], acc)
        del acc
        self._sync(check)
        for j, seg in enumerate(segs):
            lo, hi = bounds[j], bounds[j + 1]
            flat[lo:hi] = self._view(seg, self.B, flat)[lo:hi]

    def broadcast(self, flat: np.ndarray, root: int, check: Check) -> None:
        """Overwrite `flat` with rank `root`'s. Collective: all ranks must call."""
        mine = self._begin(flat.nbytes)
        region = self.C + self.count % 2
        if self.rank == root:
            self._view(mine, region, flat)[...] = flat
        self._sync(check)
        if self.rank != root:
            flat[...] = self._view(self._peers(mine)[root], region, flat)

    def barrier(self, check: Check) -> None:
        """Return once every rank has called it. Collective: all ranks must call."""
        self.count += 1
        self._sync(check)

    def close(self) -> None:
        """Unmap every segment and unlink mine (not collective)."""
        self.controls = []  # views into the control blocks go first
        for seg in self.segs + self.peer_ctl:
            if seg is not self.mine:
                self._close(seg)
        self.segs, self.peer_ctl = [], []
        for owned in [self.mine, self.ctl, *self.retired]:
            if owned is not None:
                self._release(owned)
        self.mine = self.ctl = None
        self.retired = []
