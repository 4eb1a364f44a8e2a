"""The pretrained network the transfer tests start from."""

import pytest

from tests.train.runs import tiny_checkpoint


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A checkpoint of the tiny model (tests.train.runs.TINY_MODEL) after 8 steps on mini
    MNIST."""
    return tiny_checkpoint(tmp_path_factory.mktemp("pre"), 8)
