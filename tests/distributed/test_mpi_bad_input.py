"""Bad input under real `mpiexec`: every rank exits 2 with its one line, no abort, no hang."""

from __future__ import annotations

from tests.test_bad_input import bad_input
from tests.train.runs import mpiexec, write_config


def test_a_model_that_does_not_fit_the_images_ends_every_rank_with_exit_2(tmp_path):
    mpiexec()
    cfg = write_config(tmp_path / "c.yaml", model=[{"type": "dense", "units": 10}])
    err = bad_input(["train", str(cfg), "--run-dir", str(tmp_path / "run")], ranks=2)
    for rank in (0, 1):
        assert f"distnn train [rank {rank}]: model: dense0: input per-sample shape" in err, err
    assert "Abort" not in err


def test_a_global_batch_that_does_not_split_over_the_ranks_in_the_plain_step(tmp_path):
    mpiexec()
    cfg = write_config(tmp_path / "c.yaml", train={"global_batch": 64})
    err = bad_input(["train", str(cfg), "--run-dir", str(tmp_path / "run")], ranks=3)
    for rank in (0, 1, 2):
        assert (f"distnn train [rank {rank}]: train.global_batch: 64 does not split evenly over "
                f"3 ranks; expected a multiple of 3 (e.g. 63 or 66)") in err, err


def test_more_ranks_than_groups(tmp_path):
    mpiexec()
    cfg = write_config(tmp_path / "c.yaml", train={"groups": 2, "invariant": True})
    err = bad_input(["train", str(cfg), "--run-dir", str(tmp_path / "run")], ranks=3)
    for rank in (0, 1, 2):
        assert (f"distnn train [rank {rank}]: train.groups: 2 groups cannot be shared by 3 "
                f"ranks; expected train.groups >= 3") in err, err
