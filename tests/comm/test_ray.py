"""The Communicator contract on real Ray actors (one local Ray for the module, num_cpus=2), plus
the Ray-specific guarantees: identical results on every rank, timeout and abort end the group.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="ray not installed (pip install 'distnn[ray]')")

from distnn.comm import BACKENDS, create_communicator  # noqa: E402
from distnn.comm.ray import SMALL_BYTES, RayCommunicator  # noqa: E402
from distnn.comm.rendezvous import create_group, release_segments  # noqa: E402
from distnn.comm.shm import SEGMENT_PREFIX  # noqa: E402
from tests.comm import contract  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    # Worker processes inherit the raylet's environment: let them import tests.comm.contract.
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), old) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield
    ray.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@ray.remote(num_cpus=1, max_restarts=0)
class Rank:
    def __init__(self, rank, size, rendezvous, timeout=None, transport="auto", gather_max=None):
        if gather_max is not None:  # this actor's process only
            import distnn.comm.ray
            distnn.comm.ray.GATHER_MAX_RANKS = gather_max
        self.comm = RayCommunicator(rank, size, rendezvous, timeout=timeout,
                                    transport=transport)

    def check(self, name):
        getattr(contract, name)(self.comm)
        return self.comm.rank

    def call(self, fn, *args):
        return fn(self.comm, *args)

    def pid(self):
        return os.getpid()


def group(size, timeout=None, cpus=1, transport="auto", gather_max=None):
    rendezvous, _ = create_group(size)
    ranks = [Rank.options(num_cpus=cpus).remote(r, size, rendezvous, timeout, transport,
                                                gather_max)
             for r in range(size)]
    ray.get(rendezvous.set_workers.remote(ranks))
    return rendezvous, ranks


def ended(ranks, rendezvous):
    for r in ranks:
        ray.kill(r, no_restart=True)
    release_segments(rendezvous)
    ray.kill(rendezvous, no_restart=True)


# Transports: "shm" (the default on one node: shared memory between the actors, no Ray call on
# the data path) and "object_store" (Ray's object store: what ranks on different nodes use).
@pytest.fixture(scope="module", params=["shm", "object_store"])
def pair(cluster, request):
    rendezvous, ranks = group(2, transport=request.param)
    yield ranks
    ended(ranks, rendezvous)


@pytest.mark.parametrize("check", [c.__name__ for c in contract.CHECKS])
def test_contract_on_two_ray_actors(pair, check):
    assert sorted(ray.get([r.check.remote(check) for r in pair], timeout=120)) == [0, 1]


@pytest.mark.parametrize("transport, gather_max", [
    ("shm", None), ("object_store", None),
    ("object_store", 1),  # the reduce-scatter + allgather that more than 4 ranks take
])
def test_contract_on_three_ray_actors(cluster, transport, gather_max):
    # Uneven chunks (3 ranks); these actors take no CPU slot (a pair may hold both).
    rendezvous, ranks = group(3, cpus=0, transport=transport, gather_max=gather_max)
    try:
        for check in contract.CHECKS:
            assert sorted(ray.get([r.check.remote(check.__name__) for r in ranks],
                                  timeout=120)) == [0, 1, 2]
    finally:
        ended(ranks, rendezvous)


def test_no_shared_memory_left_behind(cluster):
    rendezvous, ranks = group(2, cpus=0, transport="shm")
    gid = ray.get(rendezvous.group_id.remote())
    ray.get([r.call.remote(_noisy_sum, 100_000, np.float64) for r in ranks])
    assert len(list(Path("/dev/shm").glob(f"{SEGMENT_PREFIX}{gid}_*"))) == 4  # data + control
    ended(ranks, rendezvous)  # killed actors cannot clean up: release_segments does
    assert not list(Path("/dev/shm").glob(f"{SEGMENT_PREFIX}{gid}_*"))


def _noisy_sum(comm, n, dtype):
    rng = np.random.default_rng(comm.rank)
    buf = (rng.standard_normal(n) * 10 ** rng.uniform(-3, 3, n)).astype(dtype)
    mine = buf.copy()
    comm.allreduce_(buf)
    return buf, mine


@pytest.mark.parametrize("n", [100, SMALL_BYTES // 4 + 1, 1_000_001])
def test_allreduce_identical_on_every_rank_and_in_rank_order(pair, n):
    (a, in0), (b, in1) = ray.get([r.call.remote(_noisy_sum, n, np.float32) for r in pair])
    assert a.tobytes() == b.tobytes()  # bit-identical on both ranks
    np.testing.assert_array_equal(a, in0 + in1)  # summed in rank order, in float32


def _mixed_sequence(comm, seed):
    """Back-to-back collectives of changing sizes and kinds: a peer still reading the previous
    collective's data must never see it overwritten."""
    rng = np.random.default_rng(seed)  # the same sequence of sizes on every rank
    out = []
    for _ in range(40):
        n = int(rng.choice([10, 20_000, 300_000, 1_000_000]))
        kind = rng.integers(3)
        if kind == 0:
            buf = np.full(n, comm.rank + 1.0, dtype=np.float64)
            comm.allreduce_(buf)
            out.append(bool(np.all(buf == comm.size * (comm.size + 1) / 2)))
        elif kind == 1:
            root = int(rng.integers(comm.size))
            buf = np.full(n, comm.rank, dtype=np.int32)
            comm.broadcast_(buf, root=root)
            out.append(bool(np.all(buf == root)))
        else:
            buf = np.arange(n, dtype=np.float32) * (comm.rank + 1)
            comm.allreduce_(buf, op="max")
            out.append(bool(np.array_equal(buf, np.arange(n, dtype=np.float32) * comm.size)))
    return out


def test_mixed_back_to_back_collectives(pair):
    results = ray.get([r.call.remote(_mixed_sequence, 7) for r in pair], timeout=120)
    assert all(all(r) for r in results)


def test_registered_backend():
    assert "ray" in BACKENDS
    with pytest.raises(TypeError):
        create_communicator("ray")  # needs rank, size and group: built by the Ray launcher


def _stall_forever() -> None:
    """Block this thread for good: only an abort or a kill from outside ends the actor."""
    threading.Event().wait()


def _stall_rank0(comm, what):
    if comm.rank == 0:
        _stall_forever()  # never reaches the collective: only rank 1's timeout abort ends it
    if what == "allreduce_":
        comm.allreduce_(np.ones(1_234_567, dtype=np.float32))
    elif what == "barrier":
        comm.barrier()
    else:
        comm.bcast_obj("x")
    return "completed"


@pytest.mark.parametrize("what", ["allreduce_", "barrier", "bcast_obj"])
def test_timeout_aborts_the_whole_group(cluster, pair, what):
    # The pair holds both CPUs: this group's actors take none. Rank 0 stalls forever, so both
    # calls can end only through rank 1's 2 s timeout abort; ray.get's timeout is a hang guard
    # (GetTimeoutError, not RayActorError, fails the test).
    rendezvous, ranks = group(2, timeout=2, cpus=0)
    try:
        refs = [r.call.remote(_stall_rank0, what) for r in ranks]
        for ref in refs:
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(ref, timeout=120)
        rank, message, code = ray.get(rendezvous.abort_info.remote())
        assert rank == 1 and code == 1
        assert "did not complete within 2 s on rank 1: a peer rank is dead or stuck" in message
    finally:
        ended(ranks, rendezvous)


def _abort_on_1(comm):
    if comm.rank == 1:
        comm.abort("stopping on purpose", code=3)
    comm.barrier()
    return "completed"


def test_abort_ends_every_rank_with_its_code(cluster, pair):
    # No timeout: rank 0 waits in the barrier forever unless rank 1's abort ends it; ray.get's
    # timeout is a hang guard.
    rendezvous, ranks = group(2, cpus=0)
    try:
        refs = [r.call.remote(_abort_on_1) for r in ranks]
        for ref in refs:
            with pytest.raises(ray.exceptions.RayActorError):
                ray.get(ref, timeout=120)
        assert ray.get(rendezvous.abort_info.remote()) == (1, "stopping on purpose", 3)
    finally:
        ended(ranks, rendezvous)
