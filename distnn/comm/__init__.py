"""Communication between data-parallel workers: the Communicator interface and its backends.

    comm = create_communicator(detect_backend(), timeout=300)
    install_excepthook(comm)          # an exception on one rank ends the whole job
    comm.allreduce_(grads)            # in place, over one flat buffer

Backends are imported only when chosen, so `import distnn.comm` never imports mpi4py or ray.
"""

from __future__ import annotations

import os
from typing import Any

from distnn.comm.base import OPS, Communicator, failed_ranks
from distnn.comm.failfast import install_excepthook
from distnn.comm.local import LocalCommunicator

# Valid names for create_communicator. "ray" needs a rank, a size and a group (the rendezvous
# actor), which only the Ray launcher (distnn/launch/ray_driver.py) knows: its worker actors
# build RayCommunicator themselves; create_communicator("ray") without them is a TypeError.
BACKENDS = ("local", "mpi", "ray")

INSTALL_HINTS = {"mpi": "pip install 'distnn[mpi]'  (mpi4py + the mpich wheel)",
                 "ray": "pip install 'distnn[ray]'"}

# Launchers export the world size to every rank: MPICH/Intel MPI/srun --mpi=pmi2 (PMI_SIZE),
# Open MPI (OMPI_COMM_WORLD_SIZE), MVAPICH (MV2_COMM_WORLD_SIZE).
_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")


def create_communicator(name: str, **opts: Any) -> Communicator:
    """The communicator of backend `name` ("local" or "mpi"), built with `opts`.

    Options: timeout (seconds a collective may wait before the job aborts; None = forever).
    Unknown name -> ValueError listing the valid ones; missing optional package -> ImportError
    with the install command. Not collective, but under MPI every rank must create it.
    """
    if name not in BACKENDS:
        raise ValueError(f"unknown communicator backend {name!r}; valid: {', '.join(BACKENDS)}")
    return _load(name)(**opts)


def _load(name: str) -> type[Communicator]:
    """The backend's class; mpi and ray are imported on first use (one file per backend: only
    the chosen one's package is needed)."""
    if name == "local":
        return LocalCommunicator
    package = "ray" if name == "ray" else "mpi4py"
    try:
        if name == "ray":
            from distnn.comm.ray import RayCommunicator

            return RayCommunicator
        from distnn.comm.mpi import MPICommunicator

        return MPICommunicator
    except ImportError as exc:
        if not (exc.name or "").startswith(package):
            raise  # broken install or a bug, not a missing optional package
        raise ImportError(f"the {name!r} communicator needs {package}, which is not installed: "
                          f"{INSTALL_HINTS[name]}") from exc


def detect_backend() -> str:
    """"mpi" if this process was started by an MPI launcher with more than one rank, else
    "local". Reads only environment variables: it never imports mpi4py."""
    for var in _SIZE_VARS:
        value = os.environ.get(var, "")
        if value.isdigit():
            return "mpi" if int(value) > 1 else "local"
    # PMIx launchers (Open MPI prterun, srun --mpi=pmix) export the rank but not always the
    # size; Slurm's step task count fills in, and any rank > 0 implies more than one.
    if os.environ.get("PMIX_RANK", "").isdigit():
        tasks = os.environ.get("SLURM_STEP_NUM_TASKS", "")
        if int(os.environ["PMIX_RANK"]) > 0 or (tasks.isdigit() and int(tasks) > 1):
            return "mpi"
    return "local"


__all__ = ["BACKENDS", "INSTALL_HINTS", "OPS", "Communicator", "create_communicator",
           "detect_backend", "failed_ranks", "install_excepthook"]
