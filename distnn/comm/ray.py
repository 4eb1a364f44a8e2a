"""Ray communicator: collectives between Ray actors through Ray's object store (no torch).

Each worker actor of a group builds `RayCommunicator(rank, size, group)`; `group` is the name
of the group's rendezvous actor (`Rendezvous`, num_cpus=0, so it takes no CPU slot), which the
launcher (distnn/train/ray_launch.py) or a test creates with `create_group`.

How the data moves:
  * The rendezvous only passes small things: ObjectRefs, and payloads of small collectives. One
    call `exchange(seq, rank, item)` returns every rank's item once all ranks have sent theirs
    (an allgather of metadata, one round trip per phase).
  * allreduce_, large buffers (> SMALL_BYTES): reduce-scatter + allgather through the object
    store. Rank i splits its buffer into `size` chunks and `ray.put`s each; rank j fetches chunk
    j of every rank, reduces them in rank order in the buffer's dtype, and puts the result; every
    rank then fetches all reduced chunks. Each rank sends and receives about 2 x buffer bytes
    whatever the number of ranks. A reduced chunk is computed once and read by all, so every
    rank gets bit-identical results.
  * allreduce_, small buffers: each rank's buffer travels inline through the rendezvous and each
    rank reduces all of them in rank order (same dtype, same order on every rank: identical
    results). One round trip instead of two plus object-store puts; latency beats bandwidth here.
  * broadcast_: small payloads inline; large ones `ray.put` by the root and fetched by the others.
  * barrier: an exchange of nothing.

Timeouts: with `timeout` set, every wait of a collective is bounded; past it, `abort` ends the
group naming the operation. `abort` records the message at the rendezvous (the launcher reads
it, kills every worker actor and exits with the code), then ends this actor's process.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from typing import NoReturn

import numpy as np
import ray

from distnn.comm.base import Communicator, check_timeout
from distnn.comm.failfast import flush_and_exit

# Buffers up to this size go inline through the rendezvous (one round trip); above it, the
# reduce-scatter + allgather through the object store.
SMALL_BYTES = 64 * 1024

# "auto": shared memory when every rank is on the same node, else the object store;
# "object_store": always Ray's object store; "shm": shared memory (same node required).
TRANSPORTS = ("auto", "object_store", "shm")
# Shared-memory segments are /dev/shm/<prefix><group id>_<rank>_<n>: whoever ends a group
# (the launcher, a test) removes what is left with `release_segments`, since actors that are
# killed cannot clean up after themselves.
SEGMENT_PREFIX = "distnn_"

_REDUCE = {"sum": np.add, "max": np.maximum, "min": np.minimum}


@ray.remote(num_cpus=0)
class Rendezvous:
    """Meeting point of one worker group: allgathers small items per collective sequence number
    and remembers an abort. Async actor: waiting callers cost nothing. Takes no CPU slot."""

    def __init__(self, size: int):
        self.size = size
        self.slots: dict[int, dict] = {}  # seq -> {"items": [...], "n": got, "left": to read}
        self.events: dict[int, asyncio.Event] = {}
        self.aborted = None
        self.workers = []
        import uuid

        self.gid = uuid.uuid4().hex[:12]  # names this group's shared-memory segments

    async def exchange(self, seq: int, rank: int, item):
        slot = self.slots.setdefault(seq, {"items": [None] * self.size, "n": 0,
                                           "left": self.size})
        event = self.events.setdefault(seq, asyncio.Event())
        slot["items"][rank] = item
        slot["n"] += 1
        if slot["n"] == self.size:
            event.set()
        await event.wait()
        items = slot["items"]
        slot["left"] -= 1
        if slot["left"] == 0:  # everyone has its copy: forget the refs (lets objects be freed)
            del self.slots[seq], self.events[seq]
        return items

    def group_id(self) -> str:
        return self.gid

    def set_workers(self, workers: list) -> None:
        self.workers = list(workers)

    def abort(self, rank: int, message: str, code: int) -> None:
        """Record the first abort and kill every worker of the group (the caller included,
        unless it exits first): the job ends promptly even without a driver watching."""
        if self.aborted is None:
            self.aborted = (rank, message, code)
        for worker in self.workers:
            try:
                ray.kill(worker, no_restart=True)
            except Exception:  # already dead
                pass

    def abort_info(self):
        return self.aborted


def create_group(size: int, name: str | None = None, namespace: str | None = None):
    """Start the rendezvous actor of a group of `size` ranks; returns (handle, name). Driver side."""
    import uuid

    name = name or f"distnn-group-{uuid.uuid4().hex[:12]}"
    handle = Rendezvous.options(name=name, namespace=namespace, lifetime=None).remote(size)
    return handle, name


def release_segments(rendezvous, node_ids=None) -> None:
    """Unlink the shared-memory segments of the group of `rendezvous` (call once its workers
    are dead or done), on the given Ray nodes (default: this machine). Driver side."""
    gid = ray.get(rendezvous.group_id.remote(), timeout=30)
    if not node_ids:
        _unlink_segments(gid)
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=0)(_unlink_segments)
    ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
             .remote(gid) for node in set(node_ids)], timeout=60)


def _unlink_segments(gid: str) -> int:
    import glob

    removed = 0
    for path in glob.glob(f"/dev/shm/{SEGMENT_PREFIX}{gid}_*"):
        try:
            os.unlink(path)
            removed += 1
        except OSError:
            pass
    return removed


class RayCommunicator(Communicator):
    """Rank `rank` of `size` Ray actors meeting at the rendezvous actor named `group` (a name, or
    the actor handle itself).

    timeout: seconds any single collective may wait before the whole group is aborted with a
    message naming the operation and the rank; None waits forever.
    """

    name = "ray"

    def __init__(self, rank: int, size: int, group, timeout: float | None = None,
                 namespace: str | None = None, transport: str = "auto"):
        if not (isinstance(size, int) and size >= 1 and isinstance(rank, int)
                and 0 <= rank < size):
            raise ValueError(f"need 0 <= rank < size, got rank={rank!r} size={size!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got "
                             f"{transport!r}")
        self.timeout = check_timeout(timeout)
        self._rank, self._size = rank, size
        self._transport = transport  # "auto": decided at the first large collective
        self._shm = None
        self._rdv = (ray.get_actor(group, namespace=namespace) if isinstance(group, str)
                     else group)
        self._seq = 0
        self._keep = []  # refs of the previous collective, kept until the next one starts

    @property
    def rank(self) -> int:
        return self._rank

    @property
    def size(self) -> int:
        return self._size

    # -- plumbing ---------------------------------------------------------------------------

    def _get(self, refs, what: str, buf):
        try:
            return ray.get(refs, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            self._abort_timeout(what, buf)
        except ray.exceptions.RayActorError as exc:
            self.abort(f"{what}: the group's rendezvous actor died ({exc})")

    def _exchange(self, item, what: str, buf):
        """Allgather of a small item over ranks (one rendezvous round trip)."""
        self._seq += 1
        return self._get(self._rdv.exchange.remote(self._seq, self._rank, item), what, buf)

    def _abort_timeout(self, what: str, buf) -> NoReturn:
        subject = what if buf is None else f"{what} of {buf.size} {buf.dtype}"
        self.abort(f"{subject} did not complete within {self.timeout:g} s on rank {self._rank}: "
                   "a peer rank is dead or stuck (or needs longer: raise comm.timeout)")

    # -- collectives ------------------------------------------------------------------------

    def _allreduce(self, buf: np.ndarray, op: str) -> None:
        if self._size == 1:
            return
        flat = buf.reshape(-1, order="A")  # a view: buf is contiguous (C or F)
        reduce = _REDUCE[op]
        if self._use_shm("allreduce_", buf):
            self._shm.allreduce(flat, reduce, self._waiter("allreduce_", buf))
            return
        if flat.nbytes <= SMALL_BYTES:
            items = self._exchange(flat.copy(), "allreduce_", buf)
            acc = np.array(items[0], dtype=flat.dtype, copy=True)
            for other in items[1:]:
                reduce(acc, other, out=acc)
            flat[...] = acc
            return
        bounds = np.linspace(0, flat.size, self._size + 1).astype(np.int64)
        chunks = [flat[bounds[j]:bounds[j + 1]] for j in range(self._size)]
        # Reduce-scatter: publish my chunks (refs only travel through the rendezvous).
        mine = [None if j == self._rank else ray.put(chunks[j]) for j in range(self._size)]
        self._keep = mine
        table = self._exchange(mine, "allreduce_", buf)
        refs = [table[i][self._rank] for i in range(self._size) if i != self._rank]
        fetched = iter(self._get(refs, "allreduce_", buf)) if refs else iter(())
        acc = None
        for i in range(self._size):  # rank order, in the buffer's dtype: the same everywhere
            part = chunks[self._rank] if i == self._rank else next(fetched)
            if acc is None:
                acc = np.array(part, dtype=flat.dtype, copy=True)
            else:
                reduce(acc, part, out=acc)
        # Allgather of the reduced chunks.
        reduced_ref = ray.put(acc)
        self._keep = [reduced_ref]  # my input chunks were read by all: the exchange proves it
        table = self._exchange([reduced_ref], "allreduce_", buf)
        others = [j for j in range(self._size) if j != self._rank]
        parts = self._get([table[j][0] for j in others], "allreduce_", buf)
        chunks[self._rank][...] = acc
        for j, part in zip(others, parts):
            chunks[j][...] = part

    def _broadcast(self, buf: np.ndarray, root: int) -> None:
        if self._size == 1:
            return
        flat = buf.reshape(-1, order="A")
        if self._use_shm("broadcast_", buf):
            self._shm.broadcast(flat, root, self._waiter("broadcast_", buf))
            return
        if self._rank == root:
            item = flat.copy() if flat.nbytes <= SMALL_BYTES else [ray.put(flat)]
            self._keep = [item]
        else:
            item = None
        items = self._exchange(item, "broadcast_", buf)
        if self._rank == root:
            return
        got = items[root]
        if isinstance(got, list):
            got = self._get(got[0], "broadcast_", buf)
        flat[...] = got

    def _use_shm(self, what: str, buf) -> bool:
        """Whether collectives go through shared memory. Decided once, collectively (one
        rendezvous exchange), at the first collective: shared memory when every rank is on one
        node of an x86-64 machine (its ordered stores and loads are what make a plain counter a
        safe flag between processes), else the object store."""
        if self._transport == "object_store":
            return False
        if self._shm is None:
            import platform

            gid = self._get(self._rdv.group_id.remote(), what, buf)
            shm = _SharedMemoryTransport(self._rank, self._size, gid)
            here = (ray.get_runtime_context().get_node_id(),
                    platform.machine().lower() in ("x86_64", "amd64"))
            everyone = self._exchange(here, what, buf)  # every rank's first collective
            ok = len({node for node, _ in everyone}) == 1 and all(x86 for _, x86 in everyone)
            if self._transport == "shm" and not ok:
                shm.close()
                self.abort("transport='shm' needs every rank on one x86-64 node")
            if not ok:
                shm.close()
                self._transport = "object_store"
                return False
            shm.attach_controls()  # every rank created its control block before the exchange
            self._shm, self._transport = shm, "shm"
        return True

    def _waiter(self, what: str, buf):
        """Called with the seconds waited so far inside a shared-memory wait: aborts past the
        timeout, naming the operation."""
        def check(waited: float) -> None:
            if self.timeout is not None and waited > self.timeout:
                self._abort_timeout(what, buf)
        return check

    def _barrier(self) -> None:
        if self._size == 1:
            return
        if self._use_shm("barrier", None):
            self._shm.barrier(self._waiter("barrier", None))
        else:
            self._exchange(None, "barrier", None)

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print `message` naming this rank to stderr, record it at the group's rendezvous (which
        kills every worker actor; the launcher then exits with `code`), and end this process.
        Not collective; never returns."""
        print(f"distnn: rank {self._rank} of {self._size}: {message}", file=sys.stderr)
        sys.stderr.flush()
        try:
            ray.get(self._rdv.abort.remote(self._rank, message, code), timeout=10)
        except Exception:  # noqa: BLE001 - the rendezvous itself may be gone; exit anyway
            pass
        flush_and_exit(code)

    def close(self) -> None:
        """Release this rank's shared memory (not collective; the communicator is unusable
        afterwards)."""
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    def describe(self) -> str:
        return f"rank {self._rank} of {self._size} is pid {os.getpid()} on {socket.gethostname()}"


class _SharedMemoryTransport:
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
    SPIN_SECONDS = 0.02  # then sleep a small fraction of the time waited (see comm/mpi.py)
    SLEEP_FRACTION = 0.002
    MAX_SLEEP_SECONDS = 0.001

    def __init__(self, rank: int, size: int, gid: str):
        from multiprocessing import shared_memory

        self.rank, self.size, self.gid = rank, size, gid
        self.ctl = shared_memory.SharedMemory(name=self._name(rank, "ctl"), create=True,
                                              size=64)
        self.counter = np.ndarray((1,), dtype=np.int64, buffer=self.ctl.buf)
        self.counter[0] = 0
        self.controls = None  # every rank's counter (mine included)
        self.peer_ctl = []
        self.seq = 0
        self.mine = None  # my data segment
        self.cap, self.gen, self.count = 0, 0, 0
        self.segs = None  # every rank's data segment of generation gen (mine included)
        self.retired = []  # my older segments, unlinked once every peer is done with them

    def _name(self, rank: int, what) -> str:
        return f"{SEGMENT_PREFIX}{self.gid}_{rank}_{what}"

    def _attach(self, name: str):
        from multiprocessing import resource_tracker, shared_memory

        seg = shared_memory.SharedMemory(name=name)
        # Python < 3.13 registers attached segments too and would unlink them when this
        # process exits: only the owner (or release_segments) should.
        try:
            resource_tracker.unregister(seg._name, "shared_memory")
        except Exception:  # noqa: BLE001
            pass
        return seg

    def attach_controls(self) -> None:
        counters = []
        for r in range(self.size):
            if r == self.rank:
                counters.append(self.counter)
            else:
                seg = self._attach(self._name(r, "ctl"))
                self.peer_ctl.append(seg)
                counters.append(np.ndarray((1,), dtype=np.int64, buffer=seg.buf))
        self.controls = counters

    def _sync(self, check) -> None:
        """Pass a synchronisation point: every rank's writes before it are visible after it."""
        self.seq += 1
        seq = self.seq
        self.counter[0] = seq
        start = None
        for c in self.controls:
            while c[0] < seq:
                if start is None:
                    start = time.monotonic()
                waited = time.monotonic() - start
                check(waited)
                if waited > self.SPIN_SECONDS:
                    time.sleep(min(self.MAX_SLEEP_SECONDS, waited * self.SLEEP_FRACTION))
                else:
                    os.sched_yield()
        while self.retired:  # every rank has left the collective that used them
            old = self.retired.pop()
            self._close(old)
            try:
                old.unlink()
            except FileNotFoundError:
                pass

    def _begin(self, nbytes: int) -> None:
        """Start a collective on `nbytes`: grow my segment (a new generation) if needed."""
        from multiprocessing import shared_memory

        self.count += 1
        if self.mine is None or nbytes > self.cap:
            old = self.mine
            self.cap = max(nbytes, 64)
            self.gen += 1
            self.mine = shared_memory.SharedMemory(name=self._name(self.rank, self.gen),
                                                   create=True, size=4 * self.cap)
            if old is not None:
                # A peer may not have attached it yet (it reads the previous collective's
                # data after that collective's last sync): unlink after the next sync.
                self.retired.append(old)
            self.segs = None  # the peers' new segments exist once the next sync has passed

    def _peers(self):
        if self.segs is None or len(self.segs) != self.size:
            for seg in self.segs or []:
                if seg is not self.mine:
                    self._close(seg)
            self.segs = [self.mine if r == self.rank else self._attach(self._name(r, self.gen))
                         for r in range(self.size)]
        return self.segs

    @staticmethod
    def _close(seg) -> None:
        try:
            seg.close()
        except BufferError:  # a view still alive somewhere: garbage collection closes it
            pass

    def _view(self, seg, region: int, flat: np.ndarray) -> np.ndarray:
        return np.ndarray(flat.shape, dtype=flat.dtype, buffer=seg.buf, offset=region * self.cap)

    def allreduce(self, flat: np.ndarray, reduce, check) -> None:
        self._begin(flat.nbytes)
        if flat.nbytes <= SMALL_BYTES:
            region = self.C + self.count % 2
            self._view(self.mine, region, flat)[...] = flat
            self._sync(check)
            segs = self._peers()
            acc = np.array(self._view(segs[0], region, flat), copy=True)
            for seg in segs[1:]:  # rank order, in the buffer's dtype: the same on every rank
                reduce(acc, self._view(seg, region, flat), out=acc)
            flat[...] = acc
            return
        bounds = np.linspace(0, flat.size, self.size + 1).astype(np.int64)
        self._view(self.mine, self.A, flat)[...] = flat
        self._sync(check)
        segs = self._peers()
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        acc = self._view(self.mine, self.B, flat)[lo:hi]
        acc[...] = self._view(segs[0], self.A, flat)[lo:hi]
        for seg in segs[1:]:  # rank order, in the buffer's dtype: the same on every rank
            reduce(acc, self._view(seg, self.A, flat)[lo:hi], out=acc)
        del acc
        self._sync(check)
        for j, seg in enumerate(segs):
            lo, hi = bounds[j], bounds[j + 1]
            flat[lo:hi] = self._view(seg, self.B, flat)[lo:hi]

    def broadcast(self, flat: np.ndarray, root: int, check) -> None:
        self._begin(flat.nbytes)
        region = self.C + self.count % 2
        if self.rank == root:
            self._view(self.mine, region, flat)[...] = flat
        self._sync(check)
        if self.rank != root:
            flat[...] = self._view(self._peers()[root], region, flat)

    def barrier(self, check) -> None:
        self.count += 1
        self._sync(check)

    def close(self) -> None:
        self.controls = self.counter = None  # views into the control blocks go first
        for seg in (self.segs or []) + self.peer_ctl:
            if seg is not self.mine:
                self._close(seg)
        self.segs, self.peer_ctl = None, []
        for seg in [self.mine, self.ctl, *self.retired]:
            if seg is not None:
                self._close(seg)
                try:
                    seg.unlink()
                except FileNotFoundError:
                    pass
        self.mine = self.ctl = None
        self.retired = []
