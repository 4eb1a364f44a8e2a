"""Run the contract on every rank: `mpiexec -n N python -m tests.comm.run_contract`.

Runs every check twice: with timeout=None (blocking MPI calls) and with a timeout (non-blocking
calls completed by the polling loop), so both code paths meet the same contract. A failing check
raises on its rank; the fail-fast hook prints it prefixed with the rank and aborts the job.
"""

import sys

from distnn.comm import create_communicator, detect_backend, install_excepthook
from tests.comm.contract import CHECKS


def main() -> int:
    for timeout in (None, 30.0):
        comm = create_communicator("mpi", timeout=timeout)
        install_excepthook(comm)
        for check in CHECKS:
            check(comm)
            comm.barrier()  # keeps ranks in step, so a failure is reported at its check
    print(f"rank {comm.rank} of {comm.size}: {len(CHECKS)} checks x 2 timeouts passed "
          f"(detect_backend={detect_backend()})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
