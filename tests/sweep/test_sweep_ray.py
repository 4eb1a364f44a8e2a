"""`distnn sweep --backend ray`: Ray Tune runs the trials (its ASHAScheduler stops the weak ones)
on a real Ray head; the same sweep gives the same trials, decisions and metrics as the local
backend; a SIGTERM to the driver stops it resumably and Tuner.restore finishes it."""

from __future__ import annotations

import fcntl
import signal
import subprocess
import time

import pytest

from tests.distributed import test_ray_training
from tests.distributed.test_ray_training import ray_env
from tests.sweep.sweeps import BIN, epoch_lines, final, sweep, write_sweep

pytest.importorskip("ray.tune", reason="Ray Tune not installed (pip install 'distnn[ray]')")

head = test_ray_training.head  # the Ray tests' head fixture: one real head for this module

ASHA_SWEEP = dict(
    seed=10, metric="val_loss",
    space={"schedule.base_lr": {"choice": [0.05, 0.0003, 400.0, 0.01]},
           "train.l2": {"loguniform": [1.0e-6, 1.0e-3]}},
    stages=[{"trials": 4, "epochs": 3}],
    early_stop={"divergence": 3.0, "halving": "asha", "reduction_factor": 2})


def test_ray_tune_takes_the_same_trials_and_decisions_as_the_local_backend(head, tmp_path):
    path = write_sweep(tmp_path, **ASHA_SWEEP)
    on_ray = sweep(path, "--backend", "ray", "--address", head.address, "--parallel", "1",
                   "--run-dir", "ray", cwd=tmp_path, env=ray_env())
    assert on_ray.returncode == 0, on_ray.stderr[-3000:]
    here = sweep(path, "--parallel", "1", "--run-dir", "local", cwd=tmp_path)
    assert here.returncode == 0, here.stderr
    ray_records, local_records = final(tmp_path / "ray"), final(tmp_path / "local")
    assert sorted(ray_records) == sorted(local_records) == [f"s0-t00{i}" for i in range(4)]
    statuses = [ray_records[t]["status"] for t in sorted(ray_records)]
    assert statuses == [local_records[t]["status"] for t in sorted(local_records)]
    assert statuses[0] == "finished" and statuses[2] == "diverged"  # lr 400: seed 10's third
    assert "stopped_asha" in statuses
    for trial, rec in ray_records.items():
        assert rec["params"] == local_records[trial]["params"]
        if rec["status"] == "finished":  # the same training, to the bit
            assert rec["metric"] == local_records[trial]["metric"] and rec["epochs"] == 3
    # Tune stopped the trial at its first rung (it is credited with the epochs of its last
    # report: its run, 0.3 s an epoch, may finish before Tune acts), and no `distnn train`
    # holds its run directory any more.
    stopped = ray_records["s0-t003"]
    assert statuses[3] == "stopped_asha" and 1 <= stopped["epochs"] <= 2
    assert stopped["metric"] == min(r["loss"] for r in
                                    epoch_lines(tmp_path / "ray" / "s0-t003")[:stopped["epochs"]])
    with open(tmp_path / "ray" / "s0-t003" / "distnn.lock", "rb+") as fh:
        fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert (tmp_path / "ray" / "tune" / "stage-0").is_dir()


@pytest.mark.slow  # twin: the local backend's SIGTERM-and-resume test runs by default
def test_sigterm_to_the_ray_driver_then_resume(head, tmp_path):
    path = write_sweep(tmp_path, seed=9, stages=[{"trials": 2, "epochs": 5}])
    proc = subprocess.Popen([str(BIN / "distnn"), "sweep", str(path), "--backend", "ray",
                             "--address", head.address, "--parallel", "1", "--run-dir", "sw"],
                            cwd=tmp_path, env=ray_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    first = tmp_path / "sw" / "s0-t000"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not ((first / "metrics.jsonl").exists()
                                               and epoch_lines(first)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 75, err[-3000:]
    assert final(tmp_path / "sw")["s0-t000"]["status"] != "finished"
    again = sweep(path, "--backend", "ray", "--address", head.address, "--parallel", "1",
                  "--run-dir", "sw", "--resume", cwd=tmp_path, env=ray_env())
    assert again.returncode == 0, again.stderr[-3000:]
    records = final(tmp_path / "sw")
    assert [r["status"] for r in records.values()] == ["finished", "finished"]
    assert all(r["epochs"] == 5 for r in records.values())
    log = (tmp_path / "sw" / "logs" / "s0-t000.log").read_text()
    assert "stopped by signal after a checkpoint" in log  # the interrupted trial resumed
    assert log.count("epoch 0  ") == 2
