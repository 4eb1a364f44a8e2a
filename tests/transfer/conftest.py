"""The pretrained network the transfer tests start from."""

import pytest

from tests.train.runs import run, write_config


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint of the tiny model (tests.train.runs.TINY_MODEL) after 8 steps on mini
    MNIST."""
    tmp = tmp_path_factory.mktemp("pre")
    cfg = write_config(tmp / "pre.yaml", train={"epochs": 1, "max_steps": 8})
    out = run(["train", str(cfg), "--run-dir", str(tmp / "run")])
    assert out.returncode == 0, out.stderr
    return tmp / "run" / "checkpoints" / "last.h5"
