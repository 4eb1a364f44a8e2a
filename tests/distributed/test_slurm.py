"""The slurm/ batch scripts on a REAL one-node SLURM cluster (Debian slurm-wlm + munge).

The module starts its own munged/slurmctld/slurmd in a private directory (see slurm_cluster.py;
installs the packages with apt-get when missing, skips only if that is impossible) and stops them
by pid at the end.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from distnn.sweep.records import FINAL, read_trials
from distnn.train.checkpoint import load_checkpoint
from tests.distributed.slurm_cluster import Cluster, ensure_installed
from tests.sweep.sweeps import write_sweep
from tests.train.runs import (
    BIN,
    metrics,
    mpiexec,
    params,
    run,
    steps_per_epoch,
    wait_for,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]
MPI_SCRIPT = REPO / "slurm" / "train_mpi.sbatch"
RAY_SCRIPT = REPO / "slurm" / "ray_on_slurm.sbatch"
SWEEP_SCRIPT = REPO / "slurm" / "sweep.sbatch"
VENV = Path(sys.prefix)  # the virtualenv running the tests holds distnn and mpich


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = ensure_installed()
    if reason:
        pytest.skip(reason)
    c = Cluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start(timeout=60)
    except Exception:
        c.stop()
        raise
    yield c
    c.stop()


def job_env(**extra) -> dict:
    # Nothing from the calling shell decides CONFIG/RUN_DIR: each test says what it wants.
    env = {"CONFIG": "", "RUN_DIR": "", "DISTNN_ARGS": "", "DISTNN_VENV": str(VENV)}
    env.update(extra)
    return env


def output(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no output file)"


# Epochs that no run gets through in any realistic time (469 steps each): a job on such a config
# ends only when it is stopped.
ENDLESS = 1_000_000
PARTITION = "debug"  # the one partition of slurm_cluster.py's cluster


def test_mpi_job_preempted_requeues_resumes_and_equals_uninterrupted(cluster, tmp_path):
    mpiexec()
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": ENDLESS, "global_batch": 16})
    rd, log = tmp_path / "slurm_run", tmp_path / "job.out"
    job = cluster.sbatch("-n", "2", "-o", str(log), "--chdir", str(tmp_path), str(MPI_SCRIPT),
                         env=job_env(CONFIG=str(cfg), RUN_DIR=str(rd)))
    # The first epoch's train line (step lines come earlier: log.every_steps).
    wait_for(lambda: (rd / "metrics.jsonl").exists() and '"split": "train"' in (
        rd / "metrics.jsonl").read_text(), 600, f"the first epoch of job {job}")
    # Not a race: the job cannot finish on its own, only the signal below ends its first run.
    assert cluster.job(job)["JobState"] == "RUNNING", output(log)
    # The requeued job must wait until its config is rewritten: a DOWN partition lets the
    # running job run on but starts nothing.
    cluster.cmd("scontrol", "update", f"PartitionName={PARTITION}", "State=DOWN")
    try:
        # The preemption signal, to the batch shell only: the script forwards it to the ranks.
        cluster.cmd("scancel", "--signal=USR1", "--batch", str(job))
        info = cluster.wait_job(job, ("PENDING", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                      "NODE_FAIL"), timeout=600)
        assert info["JobState"] == "PENDING" and info["Restarts"] == "1", (info, output(log))
        # Wherever the signal landed (after epoch 0: the metrics were there), the requeued job
        # resumes from there and trains one epoch's worth of steps more (max_steps counts from
        # step 0, resumed or not).
        stopped = load_checkpoint(rd / "checkpoints/last.h5").step
        assert stopped >= steps_per_epoch(16), stopped
        end = stopped + steps_per_epoch(16)
        write_config(cfg, train={"epochs": ENDLESS, "global_batch": 16, "max_steps": end})
    finally:
        cluster.cmd("scontrol", "update", f"PartitionName={PARTITION}", "State=UP")

    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"),
                            timeout=900)
    text = output(log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text)
    assert info["Restarts"] == "1", (info, text)
    assert "got SIGUSR1: forwarding SIGUSR1 to mpiexec" in text, text
    assert "stopped after a checkpoint (exit 75): requeueing" in text, text
    assert f"[job {job} restart 1 " in text and "resuming" in text, text  # SLURM_RESTART_COUNT
    assert "training finished" in text, text
    m = metrics(rd)
    assert m[-1]["split"] == "test" and m[-1]["n"] == 2000
    assert load_checkpoint(rd / "checkpoints/last.h5").step == end

    # The uninterrupted run of the same length: the same config, never stopped.
    straight = tmp_path / "straight"
    out = run(["train", str(cfg), "--run-dir", str(straight)], ranks=2, timeout=900)
    assert out.returncode == 0, out.stderr
    a, b = params(straight / "checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), f"{k} differs after preemption + requeue"


def test_mpi_job_without_run_dir_fails_with_one_clear_error(cluster, tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    log = tmp_path / "job.out"
    job = cluster.sbatch("-n", "1", "-o", str(log), "--chdir", str(tmp_path), str(MPI_SCRIPT),
                         env=job_env(CONFIG=str(cfg)))
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=60)
    text = output(log)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0", (info, text)
    assert text.strip() == ("train_mpi.sbatch: error: RUN_DIR is not set: set RUN_DIR to the "
                            "run directory (or pass it as the 2nd argument)"), text
    assert info["Restarts"] == "0"


def test_mpi_job_takes_config_and_run_dir_as_arguments(cluster, tmp_path):
    """`sbatch train_mpi.sbatch CONFIG RUN_DIR --set ...`: arguments, no environment."""
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 5,
                                                   "global_batch": 16})
    rd, log = tmp_path / "run", tmp_path / "job.out"
    job = cluster.sbatch("-n", "2", "-o", str(log), "--chdir", str(tmp_path), str(MPI_SCRIPT),
                         str(cfg), str(rd), "--set", "train.max_steps=3", env=job_env())
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED"), timeout=90)
    assert info["JobState"] == "COMPLETED", (info, output(log))
    assert "on 2 ranks" in output(log)
    assert [m["step"] for m in metrics(rd) if m["split"] == "train"] == [3], metrics(rd)


def ray_backend_reason() -> str | None:
    """Why the Ray-on-SLURM script cannot run here, or None."""
    reasons = []
    helptext = subprocess.run([str(BIN / "distnn"), "train", "--help"], capture_output=True,
                              text=True, timeout=60).stdout
    if "--workers" not in helptext or "ray" not in helptext:
        reasons.append("`distnn train --backend ray --workers N` is not implemented "
                       "(no --workers / ray backend in `distnn train --help`)")
    if not (BIN / "ray").exists():
        reasons.append(f"Ray is not installed in {VENV} (pip install 'ray[default]')")
    return "; ".join(reasons) or None


@pytest.mark.slow  # the suite's time budget; the MPI job on the same cluster runs by default
def test_ray_on_slurm_runs_to_completion(cluster, tmp_path):
    reason = ray_backend_reason()
    if reason:
        pytest.skip(reason)
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 10,
                                                   "global_batch": 16})
    rd, log = tmp_path / "run", tmp_path / "job.out"
    job = cluster.sbatch("-N", "1", "-c", str(cluster.ncpus), "-o", str(log),
                         "--chdir", str(tmp_path), str(RAY_SCRIPT),
                         env=job_env(CONFIG=str(cfg), RUN_DIR=str(rd), WORKERS="2"))
    info = cluster.wait_job(job, ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT"), timeout=240)
    text = output(log)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, text)
    assert "training finished" in text, text
    assert metrics(rd)[-1]["split"] == "test"


def test_sweep_as_job_arrays_runs_every_stage(cluster, tmp_path):
    """`sbatch --array=0-1 slurm/sweep.sbatch SWEEP.yaml DIR`: one trial per array task, ASHA
    through the shared rungs file, and the task that ends stage 0 submits stage 1's array."""
    path = write_sweep(tmp_path, seed=10, metric="val_loss",
                       stages=[{"trials": 2, "epochs": 2},
                               {"trials": 1, "epochs": 2, "narrow_around_top": 1}],
                       early_stop={"halving": "asha", "reduction_factor": 2})
    job = cluster.sbatch("--array=0-1", "-o", str(tmp_path / "task-%a.out"), "--chdir",
                         str(tmp_path), str(SWEEP_SCRIPT), path.name, "sw", env=job_env())
    sweep_dir = tmp_path / "sw"

    def ended() -> bool:
        return read_trials(sweep_dir).get("s1-t000", {}).get("status") in FINAL

    wait_for(ended, 240, "stage 1's trial (submitted by stage 0's last task)")
    records = read_trials(sweep_dir)
    assert sorted(records) == ["s0-t000", "s0-t001", "s1-t000"]
    assert all(r["status"] in FINAL for r in records.values()), records
    texts = [output(tmp_path / f"task-{i}.out") for i in (0, 1)]
    assert sum("next stage: 1 trials: 1" in t for t in texts) == 1, texts
    best = min((r for r in records.values() if r["stage"] == 0 and r["metric"] is not None),
               key=lambda r: r["metric"])
    note = [json.loads(line) for line in (sweep_dir / "stages.jsonl").read_text().splitlines()]
    assert note[1]["around"] == [best["trial"]]
    assert cluster.job(job)["JobState"] in ("COMPLETED", "")
