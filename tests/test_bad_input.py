"""The bad-input contract of the real CLI: exit 2 and ONE line on stderr naming the bad key, file
or value and what was expected; no traceback (README, distnn/exit_codes.py)."""

from __future__ import annotations

import dataclasses
import re

import h5py
import numpy as np
import pytest

from distnn.train.checkpoint import load_checkpoint, save_checkpoint
from tests.train.runs import run, write_config

RANK_LINE = re.compile(r"distnn: rank \d+ of \d+ is pid")  # printed by every MPI rank at start


def bad_input(args: list[str], ranks: int | None = None, cwd=None) -> str:
    """Run `distnn ARGS` (on `ranks` MPI ranks); assert exit 2 with one line on stderr from
    each rank and no traceback; return those lines."""
    out = run(args, ranks=ranks, timeout=120, cwd=cwd)
    err = [line for line in out.stderr.splitlines() if not RANK_LINE.match(line)]
    assert out.returncode == 2, out.stderr
    assert "Traceback" not in out.stderr and len(err) == (ranks or 1), out.stderr
    assert all(len(line) < 1100 for line in err), [len(line) for line in err]
    return "\n".join(err)


def train_bad(tmp_path, model=None, **sections) -> str:
    cfg = write_config(tmp_path / "c.yaml", **({"model": model} if model is not None else {}),
                       **sections)
    return bad_input(["train", str(cfg), "--run-dir", str(tmp_path / "run")])


FLAT = [{"type": "flatten"}, {"type": "dense", "units": 10}]


@pytest.mark.parametrize("model,expected", [
    ([{"type": "bogus"}], r"model: layer 0: unknown type 'bogus'; expected one of .*conv"),
    ([{"type": "conv", "filters": -1}], r"model: conv0: filters=-1, expected an integer >= 1"),
    ([{"type": "conv", "filters": 4, "kernel": 50}, *FLAT],
     r"model: conv0 height: .*28 - 50.* \(on images of shape \(28, 28, 1\)\)"),
    ([{"type": "dense", "units": 10}], r"model: dense0: .*put a flatten layer before it"),
    ([], r"model: no layers; expected a non-empty list of layer specs"),
    ([{"type": "dropout", "rate": 1.5}, *FLAT], r"model: dropout0: rate=1.5, expected .*\[0, 1\)"),
    ([{"type": "flatten"}, {"type": "dense", "units": 5}],
     r"model: the last layer outputs \(5,\) per image, expected \(10,\)"),
    ([{"type": "flatten", "name": "a"}, {"type": "dense", "units": 10, "name": "a"}],
     r"model: layer 1: name 'a' is already the name of layer 0"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10**11}],
     r"model: dense1: output shape \(100000000000,\) .* expected at most"),
])
def test_model_spec_errors(tmp_path, model, expected):
    assert re.search(expected, train_bad(tmp_path, model))


def test_yaml_syntax_error_names_file_line_and_column(tmp_path):
    (tmp_path / "c.yaml").write_text("train:\n  epochs: [1\n")
    err = bad_input(["train", str(tmp_path / "c.yaml")])
    assert re.search(r"c\.yaml: line 3, column 1: invalid YAML: while parsing a flow sequence "
                     r"\(from line 2, column 11\); expected ',' or ']'", err), err


def test_python_tags_are_refused(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: !!python/object/apply:os.system ['touch pwned']\n")
    err = bad_input(["train", str(tmp_path / "c.yaml")], cwd=tmp_path)
    assert re.search(r"c\.yaml: line 1, column 7: .*python/object/apply:os.system.*; expected "
                     r"plain YAML", err), err
    assert not (tmp_path / "pwned").exists()


def alias_bomb(levels: int = 9) -> str:
    """~400 bytes whose aliases expand to 9**levels nodes, as the value of `seed`."""
    items = ['&a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefghij", "bcdefghijk"[:levels - 1], strict=False):
        items.append(f"&{name} [" + ",".join([f"*{prev}"] * 9) + "]")
    return "seed: [" + ", ".join(items) + "]\n"


def test_yaml_alias_bomb_is_refused_by_the_node_limit(tmp_path):
    """The refusal names the limit that stopped it; that the check never expands the aliases
    is counted in tests/test_config_yaml.py (the run's timeout is only a hang guard)."""
    (tmp_path / "c.yaml").write_text(alias_bomb())
    err = bad_input(["train", str(tmp_path / "c.yaml")])
    assert re.search(r"c\.yaml: line 1: YAML aliases expand to more than 100000 nodes; expected "
                     r"a plain config", err), err


def test_oversized_config_file(tmp_path):
    (tmp_path / "c.yaml").write_text("name: " + "x" * (2 << 20) + "\n")
    err = bad_input(["train", str(tmp_path / "c.yaml")])
    assert re.search(r"c\.yaml: 2097159 bytes, expected a YAML file of at most 1048576 bytes", err)


def test_long_values_are_cut_to_one_short_line():
    err = bad_input(["train", "--set", "seed=" + "a" * 5000])
    assert err.startswith("distnn train: seed: 'aaa") and "characters cut" in err
    assert err.endswith("' is not an integer")


@pytest.mark.parametrize("override,expected", [
    ("train.epochs=[", r"--set 'train.epochs=\[': line 1, column 2: invalid YAML"),
    ("schedule.base_lr=inf", r"schedule.base_lr: inf is not a finite number"),
    ("schedule.base_lr=nan", r"schedule.base_lr: nan is not a finite number"),
    ("comm.bucket_mb=0", r"comm.bucket_mb: 0.0 must be > 0"),
    ("comm.compress=int8", r"comm.compress: 'int8' is not one of none, bf16, fp16"),
])
def test_bad_set_values(override, expected):
    assert re.search(expected, bad_input(["train", "--set", override]))


# -- distnn evaluate ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    cfg = write_config(tmp / "c.yaml", train={"epochs": 1, "max_steps": 1}, data={"val_size": 0})
    out = run(["train", str(cfg), "--run-dir", str(tmp / "run")], timeout=120)
    assert out.returncode == 0, out.stderr
    return tmp / "run/checkpoints/last.h5"


def with_config(src, dst, config_yaml: str):
    save_checkpoint(dataclasses.replace(load_checkpoint(src), config_yaml=config_yaml), dst)
    return dst


def rgb_h5(path):
    with h5py.File(path, "w") as f:
        f.attrs.update(format="distnn-images", version=1, name="rgb", provenance="",
                       class_names=[f"c{i}" for i in range(10)])
        f.create_dataset("test/images", data=np.zeros((4, 32, 32, 3), np.uint8))
        f.create_dataset("test/labels", data=np.arange(4, dtype=np.int64))
    return path


@pytest.mark.parametrize("case,expected", [
    ("unknown dataset", r"unknown dataset 'nope'; expected one of"),
    ("missing files", r"dataset 'mnist' is missing 2 file\(s\) in .*empty.*download"),
    ("missing checkpoint", r"absent.h5: no such checkpoint file"),
    ("not hdf5", r"junk.h5: not a readable distnn checkpoint"),
    ("bad config yaml", r"bad-yaml.h5: its config: line 2, column 1: invalid YAML"),
    ("bad config key", r"bad-key.h5: unknown key\(s\) bogus"),
    ("model does not fit", r"its model does not fit .*rgb.h5 \[test\]: model state: conv0.W "
                           r"has shape \(3, 3, 1, 6\), expected \(3, 3, 3, 6\)"),
])
def test_evaluate_bad_input(tmp_path, monkeypatch, checkpoint, case, expected):
    args = {
        "unknown dataset": [str(checkpoint), "--dataset", "nope"],
        "missing files": [str(checkpoint), "--dataset", "mnist", "--data-dir",
                          str(tmp_path / "empty")],
        "missing checkpoint": [str(tmp_path / "absent.h5")],
        "not hdf5": [str(tmp_path / "junk.h5")],
        "bad config yaml": [str(tmp_path / "bad-yaml.h5")],
        "bad config key": [str(tmp_path / "bad-key.h5")],
        "model does not fit": [str(checkpoint), "--dataset", str(tmp_path / "rgb.h5")],
    }[case]
    (tmp_path / "junk.h5").write_bytes(b"not an HDF5 file")
    if case.startswith("bad config"):
        text = "seed: [\n" if case == "bad config yaml" else "bogus: 1\n"
        with_config(checkpoint, tmp_path / f"{case.replace('bad config ', 'bad-')}.h5", text)
    rgb_h5(tmp_path / "rgb.h5")
    monkeypatch.setenv("DISTNN_OFFLINE", "1")
    err = bad_input(["evaluate", *args])
    assert re.search(expected, err), err
