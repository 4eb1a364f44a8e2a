"""The meeting point of a Ray worker group, and the driver-side helpers around it.

The launcher (distnn/launch/ray_driver.py) or a test starts one rendezvous actor per group with
`create_group`; each worker's `RayCommunicator` (comm/ray.py) reaches it by name or handle. It
only passes small things (ObjectRefs, payloads of small collectives) and remembers an abort.
Once the group's workers are dead or done, `release_segments` removes the shared-memory
segments (comm/shm.py) that killed actors could not.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Collection, Hashable
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from distnn.comm.shm import unlink_segments


class Rendezvous:
    """Meeting point of one worker group: allgathers small items per collective sequence number
    and remembers an abort. Async actor: waiting callers cost nothing. Run as `RendezvousActor`,
    which takes no CPU slot."""

    def __init__(self, size: int):
        self.size = size
        # seq (an int, or (channel, int) for a non-blocking channel) -> {"items": [...],
        # "n": got, "left": to read}
        self.slots: dict[Hashable, dict] = {}
        self.events: dict[Hashable, asyncio.Event] = {}
        self.aborted: tuple[int, str, int] | None = None
        self.workers: list[Any] = []  # actor handles
        self.gid = uuid.uuid4().hex[:12]  # names this group's shared-memory segments

    async def exchange(self, seq: Hashable, rank: int, item: Any) -> list[Any]:
        """Every rank's `item` for collective `seq`, once all ranks have sent theirs. Collective:
        every rank of the group calls it once per `seq`."""
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

    def set_workers(self, workers: list[Any]) -> None:
        self.workers = list(workers)

    def abort(self, rank: int, message: str, code: int) -> None:
        """Record the first abort and kill every worker of the group (the caller included,
        unless it exits first): the job ends promptly even without a driver watching."""
        if self.aborted is None:
            self.aborted = (rank, message, code)
        for worker in self.workers:
            with contextlib.suppress(Exception):  # already dead
                ray.kill(worker, no_restart=True)

    def abort_info(self) -> tuple[int, str, int] | None:
        """(rank, message, exit code) of the first abort, or None."""
        return self.aborted


# Wrapped by a call, not a class decorator: mypy keeps a decorated class's own type, which has
# no `.options`. The actor's class name, as Ray reports it, stays "Rendezvous".
RendezvousActor = ray.remote(num_cpus=0)(Rendezvous)


def create_group(size: int, name: str | None = None,
                 namespace: str | None = None) -> tuple[Any, str]:
    """Start the rendezvous actor of a group of `size` ranks; returns (handle, name). Driver
    side."""
    name = name or f"distnn-group-{uuid.uuid4().hex[:12]}"
    handle = RendezvousActor.options(name=name, namespace=namespace, lifetime=None).remote(size)
    return handle, name


def release_segments(rendezvous: Any, node_ids: Collection[str] | None = None) -> None:
    """Unlink the shared-memory segments of the group of `rendezvous` (call once its workers
    are dead or done), on the given Ray nodes (default: this machine). Driver side."""
    gid = ray.get(rendezvous.group_id.remote(), timeout=30)
    if not node_ids:
        unlink_segments(gid)
        return
    task = ray.remote(num_cpus=0)(unlink_segments)
    ray.get([task.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False))
             .remote(gid) for node in set(node_ids)], timeout=60)
