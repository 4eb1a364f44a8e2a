"""Ray communicator: collectives between Ray actors through Ray's object store (no torch).

Each worker actor of a group builds `RayCommunicator(rank, size, group)`; `group` is the name
(or handle) of the group's rendezvous actor (comm/rendezvous.py: num_cpus=0, so it takes no CPU
slot), which the launcher (distnn/launch/ray_driver.py) or a test creates with `create_group`.

How the data moves:
  * The rendezvous only passes small things: ObjectRefs, and payloads of small collectives. One
    call `exchange(seq, rank, item)` returns every rank's item once all ranks have sent theirs
    (an allgather of metadata, one round trip per phase).
  * allreduce_, large buffers on up to GATHER_MAX_RANKS ranks: every rank `ray.put`s its
    buffer, fetches every other's and reduces them all in rank order (one round of transfers).
  * allreduce_, large buffers on more ranks: reduce-scatter + allgather through the object
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
  * When every rank is on one x86-64 node (transport "auto" or "shm"), the data goes through
    POSIX shared memory instead (comm/shm.py); only the first collective uses the rendezvous.

Timeouts: with `timeout` set, every wait of a collective is bounded; past it, `abort` ends the
group naming the operation. `abort` records the message at the rendezvous (the launcher reads
it, kills every worker actor and exits with the code), then ends this actor's process.
"""

from __future__ import annotations

import contextlib
import os
import platform
import socket
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NoReturn

import numpy as np
import ray

from distnn.comm.base import Combine, Communicator, Request, check_timeout, ufunc_combine
from distnn.comm.failfast import flush_and_exit
from distnn.comm.shm import SharedMemoryTransport

# Buffers up to this size go inline through the rendezvous (one round trip); above it, the
# reduce-scatter + allgather through the object store.
SMALL_BYTES = 64 * 1024

# "auto": shared memory when every rank is on the same node, else the object store;
# "object_store": always Ray's object store; "shm": shared memory (same node required).
TRANSPORTS = ("auto", "object_store", "shm")

# Up to this many ranks, a large allreduce through the object store is one round (every rank
# fetches every other's buffer) instead of a reduce-scatter + allgather (two rounds, and less
# data per rank beyond 2 ranks). Transfers between Ray nodes are latency-bound: 4 actors on two
# Ray nodes here, 1.1 M floats, 78 ms in one round against 135 ms in two (300 k: 40 / 120 ms).
GATHER_MAX_RANKS = 4

_REDUCE = {"sum": np.add, "max": np.maximum, "min": np.minimum}


class RayCommunicator(Communicator):
    """Rank `rank` of `size` Ray actors meeting at the rendezvous actor named `group` (a name, or
    the actor handle itself).

    timeout: seconds any single collective may wait before the whole group is aborted with a
    message naming the operation and the rank; None waits forever.
    """

    name = "ray"

    def __init__(self, rank: int, size: int, group: Any, timeout: float | None = None,
                 namespace: str | None = None, transport: str = "auto", channel: int = 0):
        if not (isinstance(size, int) and size >= 1 and isinstance(rank, int)
                and 0 <= rank < size):
            raise ValueError(f"need 0 <= rank < size, got rank={rank!r} size={size!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got "
                             f"{transport!r}")
        self.timeout = check_timeout(timeout)
        self._rank, self._size = rank, size
        self._transport = transport  # "auto": decided at the first collective
        self._requested = transport
        self._shm: SharedMemoryTransport | None = None
        # An actor handle: its methods exist only at run time, so it is typed Any.
        self._rdv: Any = (ray.get_actor(group, namespace=namespace) if isinstance(group, str)
                          else group)
        self._seq = 0
        self._keep: list[Any] = []  # refs of the previous collective, kept until the next one
        # channel 0: the blocking collectives; channel c > 0 (iallreduce_): a communicator of
        # its own on the same rendezvous (its own sequence numbers and shared memory), driven
        # by one thread, so its collectives run while the main thread computes.
        self._channel = channel
        self._side: dict[int, tuple[RayCommunicator, ThreadPoolExecutor]] = {}

    # -- plumbing ---------------------------------------------------------------------------

    def _get(self, refs: Any, what: str, buf: np.ndarray | None) -> Any:
        try:
            return ray.get(refs, timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            self._abort_timeout(what, buf)
        except ray.exceptions.RayActorError as exc:
            self.abort(f"{what}: the group's rendezvous actor died ({exc})")

    def _exchange(self, item: Any, what: str, buf: np.ndarray | None) -> list[Any]:
        """Allgather of a small item over ranks (one rendezvous round trip). Collective: all
        ranks must call."""
        self._seq += 1
        key = (self._channel, self._seq) if self._channel else self._seq
        return self._get(self._rdv.exchange.remote(key, self._rank, item), what, buf)

    # -- collectives ------------------------------------------------------------------------

    def _allreduce(self, buf: np.ndarray, op: str) -> None:
        if self._size == 1:
            return
        self._combined(buf.reshape(-1, order="A"), ufunc_combine(_REDUCE[op]), buf,
                       "allreduce_")

    def _allreduce_coded(self, flat: np.ndarray, combine: Combine) -> None:
        if self._size == 1:
            combine([flat.copy()], flat)
            return
        self._combined(flat, combine, flat, "allreduce_coded_")

    def _combined(self, flat: np.ndarray, combine: Combine, buf: np.ndarray, what: str) -> None:
        """flat = combine(every rank's flat, rank order), by the transport in use. Every
        combination runs in the buffer's dtype, in rank order: the same bits on every rank."""
        shm = self._shared_memory(what, buf)
        if shm is not None:
            shm.allreduce(flat, combine, self._timeout_check(what, buf))
        elif flat.nbytes <= SMALL_BYTES:
            items = self._exchange(flat.copy(), what, buf)
            combine(items, flat)
        elif self._size <= GATHER_MAX_RANKS:
            self._allreduce_gather(flat, combine, buf, what)
        else:
            self._allreduce_large(flat, combine, buf, what)

    def _allreduce_gather(self, flat: np.ndarray, combine: Combine, buf: np.ndarray,
                          what: str) -> None:
        """Few ranks: each publishes its whole buffer and fetches every other's, and each
        combines them all in rank order (the same bits everywhere). One round of transfers
        instead of two; on 2 ranks the same bytes as a reduce-scatter + allgather."""
        ref = ray.put(flat)
        self._keep = [ref]
        table = self._exchange([ref], what, buf)
        others = [r for r in range(self._size) if r != self._rank]
        got = iter(self._get([table[r][0] for r in others], what, buf))
        parts = [flat if r == self._rank else next(got) for r in range(self._size)]
        acc = np.empty_like(flat)
        combine(parts, acc)
        flat[...] = acc

    def _allreduce_large(self, flat: np.ndarray, combine: Combine, buf: np.ndarray,
                         what: str) -> None:
        """Reduce-scatter + allgather through the object store (see the module docstring)."""
        bounds = np.linspace(0, flat.size, self._size + 1).astype(np.int64)
        chunks = [flat[bounds[j]:bounds[j + 1]] for j in range(self._size)]
        # Reduce-scatter: publish my chunks (refs only travel through the rendezvous).
        mine = [None if j == self._rank else ray.put(chunks[j]) for j in range(self._size)]
        self._keep = mine
        table = self._exchange(mine, what, buf)
        refs = [table[i][self._rank] for i in range(self._size) if i != self._rank]
        fetched = iter(self._get(refs, what, buf)) if refs else iter(())
        parts = [chunks[i] if i == self._rank else next(fetched) for i in range(self._size)]
        acc = np.empty(chunks[self._rank].shape, flat.dtype)
        combine(parts, acc)
        # Allgather of the reduced chunks.
        reduced_ref = ray.put(acc)
        self._keep = [reduced_ref]  # my input chunks were read by all: the exchange proves it
        table = self._exchange([reduced_ref], what, buf)
        others = [j for j in range(self._size) if j != self._rank]
        parts = self._get([table[j][0] for j in others], what, buf)
        chunks[self._rank][...] = acc
        for j, part in zip(others, parts, strict=True):
            chunks[j][...] = part

    def _broadcast(self, buf: np.ndarray, root: int) -> None:
        if self._size == 1:
            return
        flat = buf.reshape(-1, order="A")
        shm = self._shared_memory("broadcast_", buf)
        if shm is not None:
            shm.broadcast(flat, root, self._timeout_check("broadcast_", buf))
            return
        item: Any
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

    def _shared_memory(self, what: str, buf: np.ndarray | None) -> SharedMemoryTransport | None:
        """The shared-memory transport if collectives go through it, else None (object store).
        Decided once, collectively (one rendezvous exchange), at the first collective: shared
        memory when every rank is on one node of an x86-64 machine (its ordered stores and
        loads are what make a plain counter a safe flag between processes). Collective: all
        ranks must call (every collective does, so they decide at the same one)."""
        if self._transport == "object_store":
            return None
        if self._shm is None:
            gid = self._get(self._rdv.group_id.remote(), what, buf)
            if self._channel:  # segment names stay under the group's prefix (release_segments)
                gid = f"{gid}_c{self._channel}"
            # A channel's thread runs beside the computation: its waits must not spin.
            shm = SharedMemoryTransport(self._rank, self._size, gid, SMALL_BYTES,
                                        patient=self._channel > 0)
            here = (ray.get_runtime_context().get_node_id(),
                    platform.machine().lower() in ("x86_64", "amd64"))
            everyone = self._exchange(here, what, buf)  # every rank's first collective
            ok = len({node for node, _ in everyone}) == 1 and all(x86 for _, x86 in everyone)
            if not ok:
                shm.close()
                if self._transport == "shm":
                    self.abort("transport='shm' needs every rank on one x86-64 node")
                self._transport = "object_store"
                return None
            shm.attach_controls()  # every rank created its control block before the exchange
            self._shm, self._transport = shm, "shm"
        return self._shm

    def _iallreduce(self, buf: np.ndarray, op: str, channel: int) -> Request:
        """The channel's thread runs the blocking allreduce on the channel's communicator; the
        collectives of a channel run one after the other, in the order they were started."""
        side, pool = self._channel_of(channel)
        return _FutureRequest(pool.submit(side._allreduce, buf, op))

    def _channel_of(self, channel: int) -> tuple[RayCommunicator, ThreadPoolExecutor]:
        """Channel `channel`'s communicator and thread, made at its first use."""
        if channel not in self._side:
            side = RayCommunicator(self._rank, self._size, self._rdv, self.timeout,
                                   transport=self._requested, channel=channel)
            pool = ThreadPoolExecutor(1, thread_name_prefix=f"distnn-comm{channel}")
            self._side[channel] = (side, pool)
        return self._side[channel]

    def _iallreduce_coded(self, flat: np.ndarray, combine: Combine) -> Request:
        """On channel 1's thread, in order with that channel's other collectives."""
        side, pool = self._channel_of(1)
        return _FutureRequest(pool.submit(side._allreduce_coded, flat, combine))

    def _barrier(self) -> None:
        if self._size == 1:
            return
        shm = self._shared_memory("barrier", None)
        if shm is not None:
            shm.barrier(self._timeout_check("barrier", None))
        else:
            self._exchange(None, "barrier", None)

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print `message` naming this rank to stderr, record it at the group's rendezvous (which
        kills every worker actor; the launcher then exits with `code`), and end this process.
        Not collective; never returns."""
        self._print_abort(message)
        sys.stderr.flush()
        with contextlib.suppress(Exception):  # the rendezvous itself may be gone: exit anyway
            ray.get(self._rdv.abort.remote(self._rank, message, code), timeout=10)
        flush_and_exit(code)

    def close(self) -> None:
        """Release this rank's shared memory (not collective; the communicator is unusable
        afterwards)."""
        for side, pool in self._side.values():
            pool.shutdown(wait=True)
            side.close()
        self._side = {}
        if self._shm is not None:
            self._shm.close()
            self._shm = None

    @property
    def transport(self) -> str:
        """"shm" or "object_store" once the first collective has decided; "auto" before."""
        return self._transport

    def describe(self) -> str:
        return f"rank {self._rank} of {self._size} is pid {os.getpid()} on {socket.gethostname()}"


class _FutureRequest(Request):
    """A collective running on a channel's thread. Its own communicator enforces the timeout
    (it ends the job), so waiting here needs none; an error raised there is raised here."""

    def __init__(self, future: Future):
        self._future = future

    def test(self) -> bool:
        if self._future.done():
            self._future.result()  # raises the thread's exception, if any
            return True
        return False

    def wait(self) -> None:
        self._future.result()
