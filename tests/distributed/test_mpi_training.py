"""Training under real `mpiexec`: N ranks equal 1 rank, resume is exact, faults end the job."""

import re
import subprocess
import sys

import numpy as np
import pytest

from distnn.train.checkpoint import load_checkpoint
from tests.train.runs import (
    metrics,
    mpiexec,
    params,
    run,
    run_with_step_fault,
    steps_per_epoch,
    write_config,
)

# N-rank vs 1-rank: the same global batches, so only the summation order of the gradient
# differs. After 12 momentum steps the parameters agree to float32 rounding: we allow
# |a - b| <= 1e-5 + 1e-4 |b| elementwise (observed differences are ~1e-7).
RTOL, ATOL = 1e-4, 1e-5


def short_config(tmp_path):
    return write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 12,
                                                    "global_batch": 32, "consistency_every": 1})


@pytest.mark.parametrize("ranks", [2, 4])
def test_n_ranks_equal_one_rank(tmp_path, ranks):
    mpiexec()
    cfg = short_config(tmp_path)
    one = run(["train", str(cfg), "--run-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    many = run(["train", str(cfg), "--run-dir", str(tmp_path / "many")], ranks=ranks)
    assert many.returncode == 0, many.stderr
    a = params(tmp_path / "one/checkpoints/last.h5")
    b = params(tmp_path / "many/checkpoints/last.h5")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL, err_msg=k)
    # consistency_every=1: every step compared a CRC of the parameters across ranks.
    m1, mn = metrics(tmp_path / "one"), metrics(tmp_path / "many")
    assert [m["split"] for m in m1] == [m["split"] for m in mn]
    assert mn[-1]["n"] == m1[-1]["n"] == 2000  # test split counted once across ranks


def test_resume_by_signal_equals_uninterrupted_under_mpi(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 3, "global_batch": 16})
    straight = tmp_path / "straight"
    out = run(["train", str(cfg), "--run-dir", str(straight)], ranks=2)
    assert out.returncode == 0, out.stderr
    rd = tmp_path / "stopped"
    # SIGUSR1 reaches ONE rank only (rank 1, raised in its own main thread as it enters step 5
    # of epoch 1); the flag travels in that step's allreduce to all, which drop the step and
    # checkpoint the state before it.
    epoch, step = 1, 5
    stopped = run_with_step_fault(tmp_path, "signal.raise_signal(signal.SIGUSR1)", epoch, step,
                                  ["train", str(cfg), "--run-dir", str(rd)], ranks=2, rank=1)
    assert stopped.returncode == 75, stopped.stdout + stopped.stderr
    assert load_checkpoint(rd / "checkpoints/last.h5").step == epoch * steps_per_epoch(16) + step
    resumed = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"], ranks=2)
    assert resumed.returncode == 0, resumed.stderr
    a, b = params(straight / "checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)


def _run_with_fault(tmp_path, fault: str):
    """Start 2 ranks; inject `fault` on rank 1 at its 5th step; return (code, output). Rank 0
    then waits in the step's allreduce, whose timeout (1 h) is far beyond the hang guard: only
    the fault's own mechanism (the fail-fast abort, mpiexec noticing a dead rank) can end the
    job, so nothing here is timed."""
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 50, "global_batch": 16},
                       comm={"timeout": 3600})
    proc = run_with_step_fault(tmp_path, fault, 0, 4,
                               ["train", str(cfg), "--run-dir", str(tmp_path / "run")],
                               ranks=2, rank=1, timeout=120)
    out = proc.stdout + proc.stderr
    assert "did not complete within" not in out, out  # not rank 0's own timeout
    return proc.returncode, out


def test_exception_on_one_rank_ends_the_job(tmp_path):
    code, out = _run_with_fault(tmp_path, "raise RuntimeError('injected failure')")
    assert code != 0, out
    assert "rank 1" in out and "injected failure" in out


def test_sigkill_of_one_rank_ends_the_job(tmp_path):
    code, out = _run_with_fault(tmp_path, "os.kill(os.getpid(), 9)")
    assert code != 0, out
    # mpiexec reports a terminated process by pid; distnn's startup line maps that pid to a
    # rank. Which one hydra names is a race: the killed rank 1, or rank 0 ended in the cleanup
    # (a CI run saw rank 0's pid).
    killed = re.search(r"PID (\d+) RUNNING AT", out)
    assert killed and "signal 9" in out, out
    assert re.search(rf"distnn: rank [01] of 2 is pid {killed.group(1)}\b", out), out


def test_replica_mismatch_is_detected_on_every_rank(tmp_path):
    script = tmp_path / "mismatch.py"
    script.write_text(
        "from distnn.comm import create_communicator\n"
        "from distnn.nn import Sequential\n"
        "from distnn.train.errors import ReplicaMismatch\n"
        "from distnn.train.step import check_replicas\n"
        "comm = create_communicator('mpi', timeout=20)\n"
        "model = Sequential([{'type': 'dense', 'units': 3}], (4,), seed=0)\n"
        "check_replicas(model, comm, step=1)\n"
        "if comm.rank == 1:\n"
        "    model.params[0] += 1e-7  # one rank drifts by a single rounding step\n"
        "try:\n"
        "    check_replicas(model, comm, step=2)\n"
        "except ReplicaMismatch as exc:\n"
        "    print(f'rank {comm.rank} caught: {exc}', flush=True)\n"
    )
    proc = subprocess.run([mpiexec(), "-n", "2", sys.executable, str(script)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("caught: step 2: model replicas differ") == 2, proc.stdout


def test_compressed_gradients_on_two_ranks_learn_the_quickstart(tmp_path):
    """comm.compress: bf16 with overlap under mpiexec -n 2: the replicas stay identical (the
    parameter CRCs are compared every step) and the quickstart still reaches 95 % on
    mini_mnist, as it does in float32 (tests/data/test_mini.py)."""
    mpiexec()
    out = run(["train", "--run-dir", str(tmp_path / "bf16"), "--set", "comm.compress=bf16",
               "--set", "comm.overlap=true", "--set", "comm.bucket_mb=0.05",
               "--set", "train.consistency_every=1"], ranks=2)
    assert out.returncode == 0, out.stderr
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out.stdout).group(1))
    assert accuracy >= 0.95, accuracy


@pytest.mark.slow  # three 1-epoch Fashion-MNIST runs on 2 ranks: about 5 minutes
def test_compressed_fashion_mnist_within_0_3_points(tmp_path):
    """The issue's bar: 16-bit gradients with error feedback train the bundled fashion_mnist
    config (one epoch, 2 MPI ranks, the real data in ../shared/data) to the test accuracy of
    float32 gradients within 0.3 points (benchmarks/compress.py is the same comparison)."""
    import os
    from pathlib import Path

    from benchmarks.compress import accuracy_by_codec
    mpiexec()
    data = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if not (data / "fashion-mnist").is_dir():
        pytest.skip(f"no Fashion-MNIST in {data}")
    env = {**os.environ, "DISTNN_DATA_DIR": str(data), "OPENBLAS_NUM_THREADS": "1"}
    found = accuracy_by_codec(["none", "bf16", "fp16"], 1, 2, tmp_path, env)
    for codec in ("bf16", "fp16"):
        assert abs(found[codec][0] - found["none"][0]) <= 0.003, found
