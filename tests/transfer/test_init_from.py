"""train.init_from, train.freeze and optimizer.lr_mult on real runs of `distnn train` (alone and
under mpiexec -n 2), and init_from's matching by layer name in-process."""

import numpy as np
import pytest

from distnn.config import ConfigError, from_dict
from distnn.data import ArrayDataset, get_dataset, write_h5
from distnn.nn import Sequential
from distnn.train.checkpoint import load_checkpoint
from distnn.train.transfer import init_from
from tests.train.runs import TINY_MODEL, metrics, mpiexec, params, run, write_config

FIVE = [*TINY_MODEL[:-1], {"type": "dense", "units": 5}]  # a new head: 5 classes, not 10


@pytest.fixture(scope="module")
def five_classes(tmp_path_factory):
    """Mini MNIST's digits 0-4 only, as a distnn HDF5 file (5 classes)."""
    path = tmp_path_factory.mktemp("five") / "five.h5"
    splits = {}
    for split in ("train", "test"):
        ds = get_dataset("mini_mnist", split)
        keep = np.flatnonzero(ds.labels < 5)[:1500]
        splits[split] = ArrayDataset(ds.read(keep), ds.labels[keep], [str(c) for c in range(5)],
                                     "five", split)
    return write_h5(path, splits, "five", "mini MNIST digits 0-4")


def test_a_changed_head_loads_everything_else_bit_for_bit(pretrained):
    snap = load_checkpoint(pretrained)
    model = Sequential(FIVE, (28, 28, 1), seed=5)
    fresh = model.state_dict()
    done = init_from(model, snap, ("conv3",), pretrained)
    assert done.loaded == ["conv0"] and done.reset == ["conv3"]
    assert done.new == ["dense7 (W (392, 5) here, (392, 10) there)"]
    got = model.state_dict()
    np.testing.assert_array_equal(got["conv0.W"], snap.model["conv0.W"])
    np.testing.assert_array_equal(got["conv0.b"], snap.model["conv0.b"])
    for key in ("conv3.W", "conv3.b", "dense7.W", "dense7.b"):  # the config's initialisation
        np.testing.assert_array_equal(got[key], fresh[key])


def test_named_layers_load_wherever_they_are_and_a_shifted_positional_name_is_refused(
        pretrained):
    snap = load_checkpoint(pretrained)
    shifted = [TINY_MODEL[0], TINY_MODEL[1], {"type": "dropout", "rate": 0.1}, *TINY_MODEL[3:]]
    with pytest.raises(ConfigError, match=r"layer 'conv3' has a positional name, but .* "
                                          r"model.2 is maxpool there, dropout here"):
        init_from(Sequential(shifted, (28, 28, 1)), snap, (), pretrained)
    # The same weights, named: an extra layer in front moves nothing.
    named = [{"type": "conv", "filters": 3, "kernel": 1, "name": "stem"},
             {**TINY_MODEL[0], "name": "conv0"}, *TINY_MODEL[1:3], {**TINY_MODEL[3],
                                                                     "name": "conv3"}]
    model = Sequential(named, (28, 28, 1))
    done = init_from(model, snap, (), pretrained)
    assert done.loaded == ["conv3"]  # conv0 now takes 3 channels, not 1: its shape differs
    assert done.new == ["stem (not in the checkpoint)", "conv0 (W (3, 3, 3, 6) here, "
                        "(3, 3, 1, 6) there)"]


def finetune_config(tmp, pretrained, five_classes, **train):
    return write_config(tmp / "ft.yaml", model=FIVE, data={"dataset": str(five_classes),
                                                            "val_size": 200},
                        train={"epochs": 1, "max_steps": 6, "init_from": str(pretrained),
                               "freeze_until": "conv0", "invariant": True, "groups": 4,
                               **train},
                        optimizer={"lr_mult": {"conv*": 0.5}},
                        schedule={"name": "constant", "base_lr": 0.01},
                        log={"layers_every_steps": 3})


def test_fine_tuning_keeps_frozen_layers_and_moves_the_rest_on_1_and_2_ranks(
        tmp_path, pretrained, five_classes):
    cfg = finetune_config(tmp_path, pretrained, five_classes)
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "one")])
    assert out.returncode == 0, out.stderr
    assert (f"init_from {pretrained}: loaded conv0, conv3; new dense7 (W (392, 5) here, "
            f"(392, 10) there); normalisation: the checkpoint's") in out.stderr
    before, after = params(pretrained), params(tmp_path / "one" / "checkpoints" / "last.h5")
    for key in ("conv0.W", "conv0.b"):  # frozen
        np.testing.assert_array_equal(after[key], before[key])
    assert not np.array_equal(after["conv3.W"], before["conv3.W"])  # fine-tuned at lr / 2
    layers = [m["layers"] for m in metrics(tmp_path / "one") if m["split"] == "layers"]
    assert layers and all(line["conv0"]["frozen"] and "update_ratio" not in line["conv0"]
                          and line["conv3"]["update_ratio"] > 0 for line in layers)
    mpiexec()
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "two")], ranks=2)
    assert out.returncode == 0, out.stderr
    two = params(tmp_path / "two" / "checkpoints" / "last.h5")
    for key, value in after.items():  # the invariant step: the same bits on 2 ranks
        np.testing.assert_array_equal(two[key], value, err_msg=key)
    # The plain step on 2 ranks (replicas compared every step): the frozen prefix stays put.
    plain = finetune_config(tmp_path, pretrained, five_classes, invariant=False)
    out = run(["train", str(plain), "--run-dir", str(tmp_path / "plain")], ranks=2)
    assert out.returncode == 0, out.stderr
    moved = params(tmp_path / "plain" / "checkpoints" / "last.h5")
    np.testing.assert_array_equal(moved["conv0.W"], before["conv0.W"])
    assert not np.array_equal(moved["conv3.W"], before["conv3.W"])


def test_init_from_a_file_that_is_not_a_checkpoint_is_one_line_and_exit_2(tmp_path,
                                                                          five_classes):
    bad = tmp_path / "notes.h5"
    bad.write_bytes(b"not hdf5 at all")
    cfg = finetune_config(tmp_path, bad, five_classes)
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert out.returncode == 2
    lines = [line for line in out.stderr.splitlines() if "notes.h5" in line]
    assert len(lines) == 1 and "not a readable distnn checkpoint" in lines[0], out.stderr


@pytest.mark.parametrize(("train", "optimizer", "message"), [
    ({"freeze": ["conv9"]}, {}, "train.freeze: 'conv9' is not a layer of the model; expected "
                                "layer names with parameters: conv0, conv3, dense7"),
    ({"freeze": ["relu1"]}, {}, "train.freeze: 'relu1' has no parameters"),
    ({"freeze_until": "dense7"}, {}, "train.freeze: every layer with parameters is frozen"),
    ({"freeze": ["conv0"], "freeze_until": "conv3"}, {}, "train.freeze_until: 'conv3' beside"),
    ({"reset": ["conv0"]}, {}, "train.reset: ['conv0'] without train.init_from"),
    ({}, {"lr_mult": {"fc*": 0.1}}, "optimizer.lr_mult: 'fc*' matches no layer with "
                                    "parameters; expected a glob on the names conv0, conv3"),
    ({}, {"lr_mult": {"conv*": -1}}, "optimizer.lr_mult.conv*: -1, expected a finite number"),
])
def test_bad_transfer_keys_name_the_key_and_the_layers(train, optimizer, message):
    raw = {"model": TINY_MODEL, "train": train, "optimizer": {"name": "sgd", **optimizer}}
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert message in str(err.value)
