"""`distnn summary`: per-layer parameters, activation values and memory, and forward FLOPs per
image, checked against counts written out from the formulas (FLOPs: a multiply-add is 2; conv
2*K*K*Cin*Cout*Ho*Wo + Cout*Ho*Wo; dense 2*in*out + out; elementwise 1 per output; pooling 1 per
window element per output; flatten 0), and its bad-input contract (exit 2, one stderr line)."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from distnn.cli import main as cli_main
from distnn.config import load_config
from distnn.data import ArrayDataset, catalog, write_h5
from distnn.nn import LAYERS, Sequential


def write_yaml(path, model, dataset: str = "mini_mnist"):
    """A minimal config file: defaults everywhere but the name, the dataset and the model."""
    path.write_text(yaml.safe_dump({"name": "summary-test", "data": {"dataset": dataset},
                                    "model": model}))
    return str(path)


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli_main(["summary", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def report(capsys, *argv: str) -> dict:
    code, out, err = run(capsys, *argv, "--json")
    assert code == 0 and err == "", err
    return json.loads(out)


def by_name(rep: dict) -> dict[str, dict]:
    return {row["name"]: row for row in rep["layers"]}


# -- the material's 3-4-4-1 net ---------------------------------------------------------------
NET_3441 = [{"type": "dense", "units": 4}, {"type": "relu"}, {"type": "dense", "units": 4},
            {"type": "relu"}, {"type": "dense", "units": 1}]


def test_3_4_4_1_net_has_41_parameters(capsys, tmp_path):
    cfg = write_yaml(tmp_path / "net.yaml", NET_3441)
    rep = report(capsys, cfg, "--input-shape", "3")
    assert rep["input_shape"] == [3] and rep["output_shape"] == [1]
    assert [r["params"] for r in rep["layers"]] == [16, 0, 20, 0, 5]  # 3*4+4, 4*4+4, 4*1+1
    assert rep["totals"]["params"] == 41 and rep["totals"]["param_bytes"] == 164
    # dense 2*in*out + out: 2*3*4+4 = 28, 2*4*4+4 = 36, 2*4*1+1 = 9; each relu 4 (one per value)
    assert [r["flops"] for r in rep["layers"]] == [28, 4, 36, 4, 9]
    assert rep["totals"]["flops"] == 81
    # Both relus follow a dense layer: fused, their own rows, no memory of their own.
    assert [r["description"].endswith("(fused)") for r in rep["layers"]] == [0, 1, 0, 1, 0]
    assert [r["activation_bytes"] for r in rep["layers"]] == [16, 0, 16, 0, 4]
    assert rep["totals"]["activation_bytes"] == 36 and rep["notes"] == []

    code, out, err = run(capsys, cfg, "--input-shape", "3")
    assert code == 0 and err == ""
    assert "total parameters: 41 (164 B float32)" in out
    assert "FLOPs per image (forward): 81 " in out
    assert "activation memory per image (forward): 36 B" in out
    assert "multiply-add = 2" in out
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:8]}
    assert rows["input"][1:3] == ["(3,)", "0"]
    assert rows["dense0"][-6:] == ["(4,)", "16", "4", "16", "B", "28"]
    assert rows["relu1"][-5:] == ["(4,)", "0", "4", "-", "4"]
    assert rows["dense4"][-6:] == ["(1,)", "5", "1", "4", "B", "9"]


# -- a conv net with every layer kind, counted by hand ----------------------------------------
ALL_KINDS = [
    {"type": "conv", "filters": 3, "kernel": 3, "pad": 1, "name": "c0"},       # (8, 8, 3)
    {"type": "relu", "name": "r1"},                                           # fused
    {"type": "maxpool", "size": 2, "name": "mp2"},                           # (4, 4, 3)
    {"type": "conv", "filters": 4, "kernel": 2, "stride": 2, "pad": 1, "name": "c3"},  # (3,3,4)
    {"type": "batchnorm", "name": "bn4"},
    {"type": "leaky_relu", "name": "lr5"},
    {"type": "avgpool", "size": 2, "stride": 1, "name": "ap6"},              # (2, 2, 4)
    {"type": "elu", "name": "elu7"},
    {"type": "globalavgpool", "name": "gap8"},                               # (4,)
    {"type": "flatten", "name": "fl9"},
    {"type": "dense", "units": 6, "name": "d10"},
    {"type": "relu", "name": "r11"},                                          # fused
    {"type": "maxout", "k": 2, "name": "mo12"},                              # (3,)
    {"type": "tanh", "name": "t13"},
    {"type": "dropout", "rate": 0.5, "name": "do14"},
    {"type": "dense", "units": 4, "name": "d15"},
    {"type": "sigmoid", "name": "s16"},
    {"type": "relu", "name": "r17"},                                          # not fused
    {"type": "prelu", "name": "p18"},                            # a learned slope per unit
]


def conv_flops(k: int, cin: int, cout: int, ho: int, wo: int) -> int:
    return 2 * k * k * cin * cout * ho * wo + cout * ho * wo


def dense_flops(d: int, u: int) -> int:
    return 2 * d * u + u


# name: (output shape, params, FLOPs, activation bytes), on an (8, 8, 2) input
EXPECTED = {
    "c0": ((8, 8, 3), 3 * 3 * 2 * 3 + 3, conv_flops(3, 2, 3, 8, 8), 4 * 192),  # 57, 7104
    "r1": ((8, 8, 3), 0, 192, 0),
    "mp2": ((4, 4, 3), 0, 4 * 48, 4 * 48),
    # (4 - 2 + 2*1) / 2 + 1 = 3: the stride and pad of the spec, read back from the layer
    "c3": ((3, 3, 4), 2 * 2 * 3 * 4 + 4, conv_flops(2, 3, 4, 3, 3), 4 * 36),  # 52, 900
    "bn4": ((3, 3, 4), 8, 36, 4 * 36),  # gamma, beta; one scale-and-shift per value
    "lr5": ((3, 3, 4), 0, 36, 4 * 36),
    "ap6": ((2, 2, 4), 0, 4 * 16, 4 * 16),
    "elu7": ((2, 2, 4), 0, 16, 4 * 16),
    "gap8": ((4,), 0, 2 * 2 * 4, 4 * 4),
    "fl9": ((4,), 0, 0, 0),
    "d10": ((6,), 4 * 6 + 6, dense_flops(4, 6), 4 * 6),  # 30, 54
    "r11": ((6,), 0, 6, 0),
    "mo12": ((3,), 0, 2 * 3, 4 * 3),
    "t13": ((3,), 0, 3, 4 * 3),
    "do14": ((3,), 0, 3, 4 * 3),
    "d15": ((4,), 3 * 4 + 4, dense_flops(3, 4), 4 * 4),  # 16, 28
    "s16": ((4,), 0, 4, 4 * 4),
    "r17": ((4,), 0, 4, 4 * 4),
    "p18": ((4,), 4, 4, 4 * 4),
}


def test_conv_net_counts_match_the_formulas(capsys, tmp_path):
    assert {spec["type"] for spec in ALL_KINDS} == set(LAYERS)  # every kind has a FLOP rule
    cfg = write_yaml(tmp_path / "conv.yaml", ALL_KINDS)
    rep = report(capsys, cfg, "--input-shape", "8,8,2")
    rows = by_name(rep)
    assert list(rows) == [spec["name"] for spec in ALL_KINDS]
    for name, (shape, params, flops, nbytes) in EXPECTED.items():
        row = rows[name]
        got = (tuple(row["output_shape"]), row["params"], row["flops"], row["activation_bytes"])
        assert got == (shape, params, flops, nbytes), name
        assert row["activations"] == math.prod(shape), name
    assert [n for n, r in rows.items() if r["description"].endswith("(fused)")] == ["r1", "r11"]
    assert rows["c3"]["description"] == "conv 2x2/2 pad 1 -> 4"
    # 57 + 52 + 8 + 30 + 16 + 4; 7104+192+192+900+36+36+64+16+16+0+54+6+6+3+3+28+4+4+4;
    # 768+192+144*3+64*2+16+24+12*3+16*3+16
    assert rep["totals"]["params"] == 167
    assert rep["totals"]["flops"] == 8668
    assert rep["totals"]["activation_bytes"] == 1660
    assert rep["totals"]["activations"] == 1660 // 4


# -- the bundled configs ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["quickstart", "mnist", "fashion_mnist", "cifar10"])
def test_bundled_configs_total_the_models_parameters(capsys, name):
    cfg = load_config(name)
    shape = catalog.lookup(cfg.data.dataset).image_shape
    rep = report(capsys, name)
    assert tuple(rep["input_shape"]) == tuple(shape)
    assert rep["totals"]["params"] == Sequential(list(cfg.model), shape).num_params
    assert sum(r["params"] for r in rep["layers"]) == rep["totals"]["params"]
    assert sum(r["flops"] for r in rep["layers"]) == rep["totals"]["flops"]
    assert rep["output_shape"] == [10] and rep["notes"] == []


def test_cifar10_flops_by_hand(capsys):
    rep = report(capsys, "cifar10")
    convs = (conv_flops(3, 3, 32, 32, 32) + conv_flops(3, 32, 32, 32, 32)
             + conv_flops(3, 32, 64, 16, 16) + conv_flops(3, 64, 64, 16, 16))
    relus = 2 * 32 * 32 * 32 + 2 * 16 * 16 * 64 + 256
    pools = 4 * 16 * 16 * 32 + 4 * 8 * 8 * 64
    dense = dense_flops(4096, 256) + dense_flops(256, 10)
    assert rep["totals"]["flops"] == convs + relus + pools + dense + 256  # + dropout
    # 896 + 9248 + 18496 + 36928 + 1048832 + 2570
    assert rep["totals"]["params"] == 1_116_970


def test_input_shape_overrides_the_dataset_and_set_applies(capsys):
    rep = report(capsys, "quickstart", "--input-shape", "32,32,3")
    assert rep["input_shape"] == [32, 32, 3] and rep["input_from"] == "--input-shape"
    assert by_name(rep)["dense7"]["params"] == 8 * 8 * 32 * 64 + 64
    rep = report(capsys, "quickstart", "--set", "data.dataset=cifar10")
    assert rep["input_shape"] == [32, 32, 3] and rep["input_from"] == "data.dataset cifar10"
    assert by_name(rep)["conv0"]["params"] == 3 * 3 * 3 * 16 + 16


def test_shape_and_classes_from_an_h5_header(capsys, tmp_path):
    images = np.ones((2, 5, 6, 1), np.uint8)
    splits = {s: ArrayDataset(images, np.array([0, 1]), ("a", "b", "c"), "toy", s)
              for s in ("train", "test")}
    h5 = write_h5(tmp_path / "toy.h5", splits, "toy", "")
    model = [{"type": "flatten"}, {"type": "dense", "units": 3}]
    rep = report(capsys, write_yaml(tmp_path / "c.yaml", model, str(h5)))
    assert rep["input_shape"] == [5, 6, 1] and rep["totals"]["params"] == 30 * 3 + 3
    assert rep["notes"] == []


def test_a_model_that_does_not_fit_the_classes_is_a_note(capsys, tmp_path):
    cfg = write_yaml(tmp_path / "c.yaml", [{"type": "flatten"}, {"type": "dense", "units": 1}])
    rep = report(capsys, cfg)
    assert rep["totals"]["params"] == 28 * 28 + 1
    assert len(rep["notes"]) == 1 and "10 classes" in rep["notes"][0]
    code, out, _ = run(capsys, cfg)
    assert code == 0 and "note: the model outputs (1,) per image" in out


# -- bad input ----------------------------------------------------------------------------------
def bad(capsys, *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 2, (code, out, err)
    assert out == "" and "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("distnn summary: "), err
    return lines[0]


@pytest.mark.parametrize("value", ["3,x", "0", "3,3", "", "1,2,3,4", "2.5", "-1", "4,0,1"])
def test_bad_input_shape(capsys, value):
    line = bad(capsys, "quickstart", f"--input-shape={value}")
    assert line.startswith(f"distnn summary: --input-shape: {value!r} ")
    assert line.endswith("; expected H,W,C or D positive integers")


@pytest.mark.parametrize("model,expected", [
    ([{"type": "bogus"}], "model: layer 0: unknown type 'bogus'"),
    ([{"type": "conv", "filters": 4, "kernel": 50}], "model: conv0 height: "),
    ([{"type": "dense", "units": 10}], "put a flatten layer before it"),
    ([{"type": "flatten"}, {"type": "dense", "units": 10**11}], "expected at most"),
])
def test_bad_model(capsys, tmp_path, model, expected):
    assert expected in bad(capsys, write_yaml(tmp_path / "c.yaml", model))


def test_bad_config_and_dataset(capsys, tmp_path):
    assert "no such file, and not a bundled config name" in bad(capsys, "no-such-config")
    assert "train.epochs" in bad(capsys, "quickstart", "--set", "train.epochs=-1")
    assert "--set 'nonsense'" in bad(capsys, "quickstart", "--set", "nonsense")
    assert "data.dataset: 'imagenet' is not a catalog dataset" in bad(
        capsys, "quickstart", "--set", "data.dataset=imagenet")
    assert "cannot open" in bad(capsys, "quickstart", "--set",
                                f"data.dataset={tmp_path / 'absent.h5'}")
    # A shape given on the command line needs no dataset.
    rep = report(capsys, "quickstart", "--set", "data.dataset=imagenet", "--input-shape",
                 "28,28,1")
    assert rep["totals"]["params"] == 105_866


# -- the entry point ----------------------------------------------------------------------------
def test_entry_point_in_a_child_process():
    out = subprocess.run([sys.executable, "-m", "distnn.cli", "summary", "quickstart"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    # 3*3*1*16+16 + 3*3*16*32+32 + 7*7*32*64+64 + 64*10+10 = 160 + 4640 + 100416 + 650
    assert "total parameters: 105,866 " in out.stdout
    assert "conv3" in out.stdout and out.stderr == ""
