"""Cost of the collective timeout: blocking Allreduce vs the polling loop of MPICommunicator.

    .venv/bin/mpiexec -n 2 .venv/bin/python -m tests.comm.bench_allreduce [N] [REPS]

Variants, run in rotation within each repetition so that load from other processes on a shared
machine hits all of them alike (rank 0 prints medians; a barrier aligns ranks before each call):
  mpi4py Allreduce    raw blocking MPI.COMM_WORLD.Allreduce(IN_PLACE, buf)
  comm timeout=None   MPICommunicator.allreduce_ without a timeout (blocking path + input checks)
  comm timeout=60     MPICommunicator.allreduce_ with a timeout (Iallreduce + Test polling)
Then the late-peer rows: rank 1 arrives L s late, so rank 0 waits past the spinning phase into
the sleeping one; reported as rank 0's time minus L (the extra latency of sleeping).
"""

import sys
import time

import numpy as np
from mpi4py import MPI

from distnn.comm import create_communicator

LATES = (0.1, 1.0)  # seconds rank 1 arrives late in the late-peer rows
LATE_REPS = 5


def once(fn, late: float) -> float:
    """Seconds fn() takes on this rank after a barrier; rank 1 first sleeps `late` s."""
    MPI.COMM_WORLD.Barrier()
    if late and MPI.COMM_WORLD.rank == 1:
        time.sleep(late)
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0 - (late if MPI.COMM_WORLD.rank == 0 else 0.0)


def table(variants: dict, reps: int, late: float) -> dict:
    for fn in variants.values():  # warm-up: first calls set up MPICH's shared-memory buffers
        for _ in range(3):
            fn()
    times = {name: [] for name in variants}
    for _ in range(reps):
        for name, fn in variants.items():
            times[name].append(once(fn, late))
    return {name: float(np.median(t)) for name, t in times.items()}


def main(n: int, reps: int) -> None:
    buf = np.ones(n, dtype=np.float32)
    blocking = create_communicator("mpi")
    polling = create_communicator("mpi", timeout=60)
    variants = {
        "mpi4py Allreduce": lambda: MPI.COMM_WORLD.Allreduce(MPI.IN_PLACE, buf, MPI.SUM),
        "comm timeout=None": lambda: blocking.allreduce_(buf),
        "comm timeout=60": lambda: polling.allreduce_(buf),
    }
    rows = table(variants, reps, 0.0)
    for late in LATES:
        pair = {k: variants[k] for k in ("comm timeout=None", "comm timeout=60")}
        rows.update({f"{k}, late peer {late:g} s": v
                     for k, v in table(pair, LATE_REPS, late).items()})
    if blocking.rank == 0:
        for name, secs in rows.items():
            print(f"{name:34s} {n} float32 x {blocking.size} ranks: median {secs * 1e3:7.3f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
         int(sys.argv[2]) if len(sys.argv) > 2 else 200)
