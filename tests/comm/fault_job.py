"""Fault injection under mpiexec: `mpiexec -n 2 python -m tests.comm.fault_job FAULT`.

FAULT is one of:
  raise          rank 1 raises; rank 0 waits in a blocking allreduce_ (no timeout)
  raise-thread   as raise, but in a helper thread of rank 1 (its main thread then waits too)
  abort          rank 1 calls comm.abort(..., code=3)
  sigkill        rank 1 SIGKILLs itself; rank 0 waits in a blocking allreduce_ (no timeout)
  sigkill-poll   as sigkill, but rank 0 waits in the polling loop (timeout 1 hour: longer than
                 any test waits, so only the dead peer can end the job)
  timeout-OP     rank 0 stalls forever; rank 1 waits in OP (allreduce_, broadcast_, barrier,
                 bcast_obj) with timeout 2 s. The staller is the broadcast root because a root
                 may finish its part of a broadcast without the receivers (MPI allows it).
Every case must end the whole job, non-zero; nothing here ends it normally, and no rank waits
for a set time: a rank that is not the fault blocks forever (in a collective without a timeout,
or stalled in `stall`), so the fault's own mechanism is the only way the job can end. The
caller's subprocess timeout is a hang guard, not a measurement.
"""

import os
import sys
import threading

import numpy as np

from distnn.comm import create_communicator, install_excepthook

N = 1_234_567


def collective(comm, op: str):
    buf = np.ones(N, dtype=np.float32)
    if op == "allreduce_":
        comm.allreduce_(buf)
    elif op == "broadcast_":
        comm.broadcast_(buf)
    elif op == "barrier":
        comm.barrier()
    elif op == "bcast_obj":
        comm.bcast_obj({"decision": "go"})
    else:
        raise ValueError(f"unknown op {op!r}")


def stall() -> None:
    """Block this thread forever: only something outside it (an abort, a kill) ends the rank."""
    threading.Event().wait()


def fail():
    raise RuntimeError("injected failure in a thread of rank 1")


def main(fault: str) -> int:
    timeout = 2.0 if fault.startswith("timeout-") else 3600.0 if fault == "sigkill-poll" else None
    comm = create_communicator("mpi", timeout=timeout)
    install_excepthook(comm)
    comm.barrier()
    print(f"rank {comm.rank}: ready", flush=True)
    if comm.rank == 1 and fault == "raise":
        raise RuntimeError("injected failure on rank 1")
    if comm.rank == 1 and fault == "raise-thread":
        threading.Thread(target=fail, name="prefetch", daemon=True).start()
        # The main thread is busy (as in a training step) while the thread fails, and never
        # reaches the collective: only the thread's abort can end the job.
        stall()
    if comm.rank == 1 and fault == "abort":
        comm.abort("stopping on purpose", code=3)
    if comm.rank == 1 and fault.startswith("sigkill"):
        os.kill(os.getpid(), 9)
    if comm.rank == 0 and fault.startswith("timeout-"):
        stall()
    collective(comm, fault.split("-", 1)[1] if fault.startswith("timeout-") else "allreduce_")
    print(f"rank {comm.rank}: collective completed (the fault did not end the job)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
