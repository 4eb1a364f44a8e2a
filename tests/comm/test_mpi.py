"""The contract on real MPI ranks (mpich's mpiexec), and the fail-fast machinery.

Nothing here is timed: in every fault job the ranks that are not the fault block forever (see
tests/comm/fault_job.py), so a job that ends at all was ended by the fault's mechanism. The
subprocess timeouts only stop a hang (and fail the test).
"""

import pytest

from tests.comm.mpi_helpers import run_module


@pytest.mark.parametrize("ranks", [2, 3])  # 3 ranks on 2 cores: mpich needs no oversubscribe flag
def test_contract_under_mpiexec(ranks):
    proc = run_module(ranks, "tests.comm.run_contract")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for rank in range(ranks):
        assert f"rank {rank} of {ranks}: " in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.count("detect_backend=mpi") == ranks


def test_exception_on_one_rank_ends_the_job_naming_it():
    proc = run_module(2, "tests.comm.fault_job", "raise")
    assert proc.returncode != 0, (proc.returncode, proc.stderr)
    assert "[rank 1] RuntimeError: injected failure on rank 1" in proc.stderr, proc.stderr
    assert "uncaught RuntimeError on rank 1" in proc.stderr
    assert "collective completed" not in proc.stdout


def test_exception_in_a_thread_ends_the_job_naming_it():
    proc = run_module(2, "tests.comm.fault_job", "raise-thread")
    assert proc.returncode != 0, (proc.returncode, proc.stderr)
    assert "[rank 1] RuntimeError: injected failure in a thread of rank 1" in proc.stderr
    assert "uncaught RuntimeError in thread prefetch on rank 1" in proc.stderr


def test_abort_ends_every_rank_with_its_code():
    proc = run_module(2, "tests.comm.fault_job", "abort")
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "distnn: rank 1 of 2: stopping on purpose" in proc.stderr
    assert "collective completed" not in proc.stdout


@pytest.mark.parametrize("fault", ["sigkill", "sigkill-poll"])
def test_sigkill_of_one_rank_ends_the_job(fault):
    # Hydra (mpich's mpiexec) notices the dead process and kills the others; its message names
    # the PID and signal, not the rank: a dead rank cannot speak for itself.
    proc = run_module(2, "tests.comm.fault_job", fault)
    assert proc.returncode != 0, (proc.returncode, proc.stderr)
    output = proc.stdout + proc.stderr
    assert "BAD TERMINATION" in output and "signal 9" in output
    assert "did not complete within" not in output  # rank 0's own timeout (1 h) did not fire
    assert "collective completed" not in proc.stdout


@pytest.mark.parametrize("op", ["allreduce_", "broadcast_", "barrier", "bcast_obj"])
def test_collective_timeout_aborts_naming_the_operation(op):
    # Rank 0 stalls forever outside MPI; rank 1's timeout is 2 s. Only the abort from rank 1's
    # polling loop can end rank 0 (it is not in MPI at all), so the job ending is the proof.
    proc = run_module(2, "tests.comm.fault_job", f"timeout-{op}")
    assert proc.returncode != 0, (proc.returncode, proc.stderr)
    subject = {"allreduce_": "allreduce_ of 1234567 float32", "broadcast_":
               "broadcast_ of 1234567 float32", "barrier": "barrier",
               "bcast_obj": "broadcast_ of 1 int64"}[op]
    assert (f"rank 1 of 2: {subject} did not complete within 2 s on rank 1: a peer rank is dead "
            "or stuck") in proc.stderr, proc.stderr
    assert "collective completed" not in proc.stdout
