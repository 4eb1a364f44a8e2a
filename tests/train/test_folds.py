"""Cross-validation folds (data.folds, data.fold): the k validation folds partition the training
split, each training part is the rest, the cut follows the seed; the keys' bad values are one
line each; and a real run validates on exactly its fold."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.config import ConfigError, from_dict, load_config
from distnn.data import get_dataset
from distnn.train.setup import Splits, Subset, load_splits
from tests.config_harness import toy_h5
from tests.train.runs import metrics, run, write_config

MINI_TRAIN = 8000  # images in the bundled mini MNIST's training split


def splits(folds: int, fold: int, seed: int = 0, dataset: str = "mini_mnist",
           val_size: int = 0) -> Splits:
    return load_splits(from_dict({"seed": seed, "data": {
        "dataset": dataset, "folds": folds, "fold": fold, "val_size": val_size}}))


def indices(part) -> np.ndarray:
    assert isinstance(part, Subset)
    return part.indices


@pytest.mark.parametrize("folds", [2, 3, 7])
def test_the_validation_folds_partition_the_training_split(folds):
    n = len(get_dataset("mini_mnist", "train"))
    assert n == MINI_TRAIN
    everything = np.arange(n)
    vals = []
    for fold in range(folds):
        s = splits(folds, fold)
        val, train = indices(s.val), indices(s.train)
        assert s.val.split == "val" and s.train.split == "train" and s.test.split == "test"
        assert np.all(np.diff(val) > 0) and np.all(np.diff(train) > 0)  # sorted, no repeats
        assert np.array_equal(train, np.setdiff1d(everything, val))  # the complement
        assert np.array_equal(s.val.labels, get_dataset("mini_mnist", "train").labels[val])
        vals.append(val)
    # every training index in exactly one validation fold
    assert np.array_equal(np.sort(np.concatenate(vals)), everything)
    sizes = [len(v) for v in vals]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # np.array_split: the longer parts first
    # a shuffled cut, not runs of consecutive images
    assert all(np.diff(v).max() > 1 for v in vals)


def test_fold_0_is_the_val_size_hold_out_of_the_same_size():
    """Both cut the one seeded permutation of the training split: fold 0 is its first part."""
    for seed, folds in ((0, 3), (5, 4)):
        fold0 = splits(folds, 0, seed=seed)
        held = splits(0, 0, seed=seed, val_size=len(fold0.val))
        assert np.array_equal(indices(fold0.val), indices(held.val))
        assert np.array_equal(indices(fold0.train), indices(held.train))


def test_the_seed_decides_the_folds():
    a, again, b = splits(3, 1, seed=0), splits(3, 1, seed=0), splits(3, 1, seed=1)
    assert np.array_equal(indices(a.val), indices(again.val))
    assert len(indices(a.val)) == len(indices(b.val))
    assert not np.array_equal(indices(a.val), indices(b.val))


def test_folds_of_a_small_dataset_and_too_many_folds(tmp_path):
    file = str(toy_h5(tmp_path, n_train=40))
    sizes = [len(indices(splits(3, f, dataset=file).val)) for f in range(3)]
    assert sizes == [14, 13, 13]
    singles = [indices(splits(40, f, dataset=file).val) for f in range(40)]
    assert all(len(v) == 1 for v in singles)
    assert sorted(int(v[0]) for v in singles) == list(range(40))
    with pytest.raises(ConfigError) as err:
        splits(41, 0, dataset=file)
    assert str(err.value) == ("data.folds: 41 folds of the 40 training samples, expected at most "
                              "40 (each fold at least one sample)")


@pytest.mark.parametrize("data,message", [
    ({"folds": 1}, "data.folds: 1, expected 0 (off) or >= 2 (folds of the training split, one "
                   "of them the validation set)"),
    ({"folds": 3, "fold": 3}, "data.fold: 3, expected 0 to 2 (one of the data.folds 3 folds)"),
    ({"folds": 5, "fold": 9}, "data.fold: 9, expected 0 to 4 (one of the data.folds 5 folds)"),
    ({"fold": 2}, "data.fold: 2 with data.folds 0 (off), expected 0 or data.folds >= 2"),
    ({"folds": 3, "val_size": 10}, "data.val_size: 10 with data.folds 3, expected one of them "
                                   "(val_size 0 with folds, or folds 0 with val_size)"),
    ({"folds": -1}, "data.folds: -1 must be >= 0"),
    ({"fold": -2}, "data.fold: -2 must be >= 0"),
    ({"folds": "3"}, "data.folds: '3' is not an integer"),
])
def test_bad_fold_keys(data, message):
    with pytest.raises(ConfigError) as err:
        from_dict({"data": data})
    assert str(err.value) == message


def test_bad_fold_keys_through_overrides():
    # quickstart holds out data.val_size 1000: folds alone clash with it
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", ["data.folds=3"])
    assert str(err.value) == ("data.val_size: 1000 with data.folds 3, expected one of them "
                              "(val_size 0 with folds, or folds 0 with val_size)")
    with pytest.raises(ConfigError) as err:
        load_config("quickstart", ["data.val_size=0", "data.folds=1"])
    assert "\n" not in str(err.value) and str(err.value).startswith("data.folds: 1, expected")
    cfg = load_config("quickstart", ["data.val_size=0", "data.folds=4", "data.fold=3"])
    assert (cfg.data.folds, cfg.data.fold, cfg.data.val_size) == (4, 3, 0)


def test_a_run_validates_on_its_fold(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", data={"val_size": 0},
                       train={"epochs": 1, "max_steps": 3})
    rd = tmp_path / "run"
    out = run(["train", str(cfg), "--run-dir", str(rd), "--set", "data.folds=3",
               "--set", "data.fold=1"], timeout=300)
    assert out.returncode == 0, out.stderr
    fold_size = len(np.array_split(np.arange(MINI_TRAIN), 3)[1])
    assert fold_size == 2667
    lines = metrics(rd)
    vals = [m for m in lines if m["split"] == "val"]
    assert vals and all(m["n"] == fold_size for m in vals)
    assert [m["n"] for m in lines if m["split"] == "test"] == [2000]
    saved = load_config(str(rd / "config.yaml"))
    assert (saved.data.folds, saved.data.fold) == (3, 1)
