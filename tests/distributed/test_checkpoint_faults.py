"""Checkpoint faults under real `mpiexec -n 2`: a failed write ends every rank with exit 74, kills
and bit flips resume exactly or are refused, rollback and gradient clipping keep the replicas
identical."""

import numpy as np
import pytest

from tests.train.faults import run_with_fault
from tests.train.runs import metrics, mpiexec, params, run, write_config
from tests.train.test_divergence import JUMP_TO_DIVERGENCE
from tests.train.test_fault_injection import fault_rounds


def test_failed_write_ends_every_rank_with_exit_74(tmp_path):
    mpiexec()
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 8},
                       checkpoint={"every_steps": 1}, comm={"timeout": 60})
    rd = tmp_path / "run"
    # Rank 0 fails part-way through its third write; rank 1 must learn it, not wait.
    out = run_with_fault(tmp_path, ["train", str(cfg), "--run-dir", str(rd)], save=3,
                         phase="mid-file", kill=False, ranks=2, timeout=120)
    assert out.returncode == 74, out.stdout + out.stderr
    assert out.stderr.count("distnn train: checkpoint write failed:") == 1, out.stderr
    assert "Traceback" not in out.stderr
    assert f"the last good checkpoint is {rd / 'checkpoints/last.h5'} (step 2)" in out.stderr
    assert not [p for p in (rd / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_kills_and_bit_flips_under_mpi(tmp_path):
    mpiexec()
    assert "resumed" in fault_rounds(tmp_path, range(200, 202), ranks=2)


@pytest.mark.slow
def test_kills_and_bit_flips_under_mpi_many(tmp_path):
    mpiexec()
    outcomes = fault_rounds(tmp_path, range(300, 312), ranks=2)
    assert "resumed" in outcomes


def test_rollback_under_mpi(tmp_path):
    cfg = write_config(tmp_path / "c.yaml",
                       train={"epochs": 1, "max_steps": 12, "on_divergence": "rollback",
                              "rollback_lr_factor": 0.01, "consistency_every": 1},
                       checkpoint={"every_steps": 1}, schedule=JUMP_TO_DIVERGENCE)
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd)], ranks=2)
    assert out.returncode == 0, out.stderr
    rb = [m for m in metrics(rd) if m["split"] == "rollback"]
    assert len(rb) == 1 and rb[0]["to_step"] == rb[0]["step"] - 1 >= 1
    assert out.stderr.count("rollback 1 of 3") == 1  # rank 0 says it once


def test_clipped_gradients_keep_replicas_identical(tmp_path):
    # consistency_every 1: a CRC of the parameters is compared across ranks after every step.
    cfg = write_config(tmp_path / "c.yaml",
                       train={"epochs": 1, "max_steps": 12, "clip_grad_norm": 0.05,
                              "consistency_every": 1})
    one = run(["train", str(cfg), "--run-dir", str(tmp_path / "one")])
    assert one.returncode == 0, one.stderr
    two = run(["train", str(cfg), "--run-dir", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr
    a = params(tmp_path / "one/checkpoints/last.h5")
    b = params(tmp_path / "two/checkpoints/last.h5")
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)
    free = write_config(tmp_path / "f.yaml", train={"epochs": 1, "max_steps": 12})
    assert run(["train", str(free), "--run-dir", str(tmp_path / "free")]).returncode == 0
    c = params(tmp_path / "free/checkpoints/last.h5")
    assert not all(np.allclose(a[k], c[k]) for k in a)  # the clipping did act
