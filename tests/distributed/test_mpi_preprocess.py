"""data.preprocess pca_whiten under real `mpiexec -n 2`: each rank sums its shard of the training
split, the sums are allreduced, rank 0 decomposes and broadcasts. Pixel sums are whole numbers,
exact in float64 in any order, and the decomposition runs on one BLAS thread: the statistics are
the same bits as one process computes (no tolerance), and with train.invariant the whole run is
too."""

import numpy as np
import yaml

from distnn.comm import LocalCommunicator
from distnn.config import from_dict
from distnn.data import Preprocess
from distnn.data import preprocess as pre
from distnn.train.checkpoint import load_checkpoint
from distnn.train.run import train
from distnn.train.setup import load_splits
from tests.train.runs import metrics, mpiexec, params, run, write_config

DENSE = [{"type": "flatten"}, {"type": "dense", "units": 10}]


def test_two_ranks_fit_the_same_bits_as_one_process(tmp_path):
    mpiexec()
    cfg_path = write_config(tmp_path / "c.yaml", model=DENSE,
                            data={"train_size": 600, "val_size": 100, "preprocess": "pca_whiten",
                                  "pca_components": 30},
                            train={"epochs": 1, "global_batch": 50, "invariant": True,
                                   "groups": 4})
    two = run(["train", str(cfg_path), "--run-dir", str(tmp_path / "two")], ranks=2)
    assert two.returncode == 0, two.stderr
    cfg = from_dict(yaml.safe_load(cfg_path.read_text()))
    one = train(cfg, LocalCommunicator(), tmp_path / "one")
    assert one.exit_code == 0
    got = load_checkpoint(tmp_path / "two/checkpoints/last.h5").normalization
    alone = load_checkpoint(tmp_path / "one/checkpoints/last.h5").normalization
    fitted = pre.fit(load_splits(cfg).train, "pca_whiten", 30)  # the 500 samples trained on
    assert isinstance(got, Preprocess) and isinstance(alone, Preprocess)
    assert got.components == 30 and sorted(got.arrays) == sorted(fitted.arrays)
    for name in fitted.arrays:
        assert np.array_equal(got.arrays[name], fitted.arrays[name]), name
        assert np.array_equal(alone.arrays[name], fitted.arrays[name]), name
    a, b = (params(tmp_path / f"{n}/checkpoints/last.h5") for n in ("one", "two"))
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert metrics(tmp_path / "two")[-1] | {"images_per_s": 0} == \
        metrics(tmp_path / "one")[-1] | {"images_per_s": 0}
