"""The contract in one process with the local communicator, plus the factory and detection."""

import os
import subprocess
import sys

import numpy as np
import pytest

from distnn.comm import BACKENDS, create_communicator, detect_backend
from distnn.comm.local import LocalCommunicator
from tests.comm.contract import CHECKS


@pytest.mark.parametrize("check", CHECKS, ids=lambda f: f.__name__)
def test_contract_local(check):
    check(create_communicator("local"))


def test_local_is_rank_0_of_1_and_returns_buffers_unchanged():
    comm = create_communicator("local", timeout=5)
    assert (comm.name, comm.rank, comm.size) == ("local", 0, 1)
    buf = np.arange(4.0)
    for op in ("sum", "max", "min"):
        assert comm.allreduce_(buf, op=op) is buf
    assert comm.broadcast_(buf) is buf
    np.testing.assert_array_equal(buf, np.arange(4.0))


def test_unknown_backend_lists_valid_names():
    with pytest.raises(ValueError,
                       match=r"unknown communicator backend 'nccl'; valid: local, mpi, ray"):
        create_communicator("nccl")
    assert BACKENDS == ("local", "mpi", "ray")


@pytest.mark.parametrize("timeout", [0, -1, "60", float("nan")])
def test_bad_timeout_is_rejected(timeout):
    with pytest.raises(ValueError, match="timeout must be a positive number"):
        create_communicator("local", timeout=timeout)


def test_missing_mpi4py_gives_install_hint(monkeypatch):
    # None in sys.modules makes `import mpi4py` raise ImportError, as if it were not installed.
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.delitem(sys.modules, "distnn.comm.mpi", raising=False)
    with pytest.raises(ImportError, match=r"pip install 'distnn\[mpi\]'"):
        create_communicator("mpi")


def test_importing_comm_or_detecting_does_not_import_mpi4py():
    code = ("import sys, distnn.comm as c\n"
            "assert c.detect_backend() == 'local'\n"
            "c.create_communicator('local')\n"
            "assert 'mpi4py' not in sys.modules, sorted(sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "PMIX"))}
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env)


@pytest.mark.parametrize("env, expected", [
    ({}, "local"),
    ({"PMI_RANK": "0", "PMI_SIZE": "2"}, "mpi"),           # MPICH hydra, Intel MPI, srun pmi2
    ({"PMI_RANK": "0", "PMI_SIZE": "1"}, "local"),         # mpiexec -n 1
    ({"OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_RANK": "3"}, "mpi"),  # Open MPI
    ({"PMIX_RANK": "1"}, "mpi"),                           # PMIx: a rank > 0 implies size > 1
    ({"PMIX_RANK": "0", "SLURM_STEP_NUM_TASKS": "2"}, "mpi"),
    ({"PMIX_RANK": "0"}, "local"),
    ({"SLURM_NTASKS": "8"}, "local"),  # an sbatch script itself is not a rank
])
def test_detect_backend(monkeypatch, env, expected):
    for var in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK",
                "MV2_COMM_WORLD_SIZE", "PMIX_RANK", "SLURM_STEP_NUM_TASKS", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    assert detect_backend() == expected


def test_local_abort_ends_the_process_with_the_message():
    code = ("from distnn.comm import create_communicator\n"
            "create_communicator('local').abort('gave up on purpose', code=3)\n"
            "print('not reached')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 3 and "not reached" not in out.stdout
    assert "rank 0 of 1: gave up on purpose" in out.stderr


def test_local_repr():
    assert repr(LocalCommunicator()) == "<LocalCommunicator name='local' rank=0 size=1>"
