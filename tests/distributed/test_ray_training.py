"""Training on real Ray actors: `distnn train --backend ray` against one real local head.

The module starts ONE head (`ray start --head --block` on loopback, 2 CPUs, with the dashboard
so that the job server of `ray job submit` runs) and ends it by its pid (SIGTERM to the blocking
`ray start`, which stops the processes it started; no machine-wide `ray stop`). Every driver is a
real `distnn train` subprocess connecting with --address.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.distributed.ray_helpers import (
    Head,
    distnn,
    free_port,
    job_submit,
    ray_env,
    ray_train,
    train_killed_once,
)
from tests.train.runs import metrics, mpiexec, params, run, write_config

pytest.importorskip("ray", reason="ray not installed (pip install 'distnn[ray]')")

__all__ = ["ray_env"]  # tests/sweep/test_sweep_ray.py imports it from here

# The same bound as the MPI test (tests/distributed/test_mpi_training.py).
RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture(scope="module")
def head():
    h = Head()
    try:
        h.wait_ready()
        yield h
    finally:
        h.stop()


def test_two_ray_workers_equal_one_process(head, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 12,
                                                   "global_batch": 32, "consistency_every": 1})
    one = distnn(["train", str(cfg), "--run-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    many = ray_train(head, cfg, tmp_path / "many")
    assert many.returncode == 0, many.stdout + many.stderr
    assert "rank 1 of 2 is pid" in many.stderr and "test accuracy" in many.stdout
    a = params(tmp_path / "one/checkpoints/last.h5")
    b = params(tmp_path / "many/checkpoints/last.h5")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=RTOL, atol=ATOL, err_msg=k)
    m1, mn = metrics(tmp_path / "one"), metrics(tmp_path / "many")
    assert [m["split"] for m in m1] == [m["split"] for m in mn]
    assert mn[-1]["n"] == m1[-1]["n"] == 2000  # test split counted once across ranks


@pytest.mark.slow  # the MPI twin (tests/transfer/test_init_from.py) runs by default
def test_init_from_and_a_frozen_prefix_on_ray_equal_one_process(head, tmp_path):
    """--init-from and train.freeze_until on 2 Ray actors: the invariant step gives the bits of
    one process, and the frozen layer is the pretrained one."""
    pre = write_config(tmp_path / "pre.yaml", train={"epochs": 1, "max_steps": 4})
    assert distnn(["train", str(pre), "--run-dir", str(tmp_path / "pre")]).returncode == 0
    ckpt = tmp_path / "pre/checkpoints/last.h5"
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 6,
                                                   "freeze_until": "conv0", "invariant": True,
                                                   "groups": 4})
    one = distnn(["train", str(cfg), "--run-dir", str(tmp_path / "one"), "--init-from",
                  str(ckpt)])
    assert one.returncode == 0, one.stderr
    many = ray_train(head, cfg, tmp_path / "many", "--init-from", str(ckpt))
    assert many.returncode == 0, many.stdout + many.stderr
    assert f"init_from {ckpt}: loaded conv0, conv3, dense7" in many.stderr
    a = params(tmp_path / "one/checkpoints/last.h5")
    b = params(tmp_path / "many/checkpoints/last.h5")
    for k in a:
        np.testing.assert_array_equal(b[k], a[k], err_msg=k)
    np.testing.assert_array_equal(b["conv0.W"], params(ckpt)["conv0.W"])


# Rank 1 of the first worker group is killed on entering step KILL_STEP of epoch KILL_EPOCH,
# i.e. after every rank has learnt that the end-of-epoch checkpoint before it was written.
KILL_EPOCH, KILL_STEP = 1, 5


@pytest.mark.slow  # the suite's time budget: its two-node twin (test_ray_elastic.py) runs
def test_killed_actor_is_replaced_and_resumes_bit_identical(head, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 3, "global_batch": 16},
                       checkpoint={"every_epochs": 1})
    straight = ray_train(head, cfg, tmp_path / "straight")
    assert straight.returncode == 0, straight.stderr
    rd = tmp_path / "killed"
    train_killed_once(head, cfg, rd, KILL_EPOCH, KILL_STEP)
    # Killed in epoch 1: resumed from the end of epoch 0, each epoch validated once.
    assert [m["step"] for m in metrics(rd) if m["split"] == "val"] == [469, 2 * 469, 3 * 469]
    a, b = params(tmp_path / "straight/checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("first,then", [
    # The suite's time budget: both directions are slow; the two-node and the MPI tests show
    # that each backend computes one process's bits from the same checkpoint format.
    pytest.param("mpi", "ray", marks=pytest.mark.slow),
    pytest.param("ray", "mpi", marks=pytest.mark.slow),
])
def test_checkpoint_moves_between_mpi_and_ray(head, tmp_path, first, then):
    """Epoch 1 on one backend, epoch 2 resumed from its last.h5 on the other, on another number
    of workers (3 MPI ranks, 2 Ray actors): with train.invariant, bit-identical to 2 epochs in
    one process (constant learning rate, so the epoch count changes nothing else)."""
    mpiexec()
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 2, "global_batch": 32,
                                                   "invariant": True})

    def train(backend, rd, *extra):
        if backend == "mpi":
            out = run(["train", str(cfg), "--run-dir", str(rd), *extra], ranks=3)
        elif backend == "local":
            out = run(["train", str(cfg), "--run-dir", str(rd), *extra])
        else:
            out = ray_train(head, cfg, rd, *extra)
        assert out.returncode == 0, out.stdout + out.stderr
        return out

    train("local", tmp_path / "straight")
    rd = tmp_path / "moved"
    train(first, rd, "--set", "train.epochs=1")
    train(then, rd, "--resume", "auto", "--set", "train.epochs=2")
    assert [m["epoch"] for m in metrics(rd) if m["split"] == "val"] == [0, 1]
    a, b = params(tmp_path / "straight/checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow  # its two-node twin (tests/distributed/test_ray_elastic.py) runs by default
def test_ray_job_submit_runs_training(head, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 6,
                                                   "global_batch": 32})
    rd = tmp_path / "job"
    out = job_submit(head, cfg, "--workers", "2", "--run-dir", rd)
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert "succeeded" in text and "test accuracy" in text, text
    assert metrics(rd)[-1]["split"] == "test"


def test_unreachable_address_is_one_clear_error(tmp_path):
    # "cannot reach" is the TCP check made before ray.init (which would retry for a long time;
    # its failure says "cannot connect"): that message, not a stopwatch, shows ray.init was never
    # tried. The timeout is a hang guard.
    cfg = write_config(tmp_path / "c.yaml")
    out = distnn(["train", str(cfg), "--backend", "ray", "--workers", "2", "--address",
                  f"127.0.0.1:{free_port()}", "--run-dir", str(tmp_path / "r")], timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.count("error:") == 1 and "cannot reach the Ray cluster at 127.0.0.1:" \
        in out.stderr, out.stderr
    assert "cannot connect" not in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()


def test_more_workers_than_cpus_is_one_clear_error(head, tmp_path):
    cfg = write_config(tmp_path / "c.yaml")
    out = distnn(["train", str(cfg), "--backend", "ray", "--workers", "3", "--address",
                  head.address, "--run-dir", str(tmp_path / "r")], timeout=60)
    assert out.returncode == 2, out.stderr
    assert "--workers 3 needs 3 CPUs (one per worker), but the Ray cluster at " \
        f"{head.address} has 2" in out.stderr, out.stderr
    assert not (tmp_path / "r").exists()
