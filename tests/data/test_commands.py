"""`distnn data list | verify | download | convert`, through a parser built here (the full
CLI also needs distnn.train)."""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from distnn.data import H5Dataset, catalog, get_dataset
from distnn.data.commands import register_data_commands

from .cifar_fixture import write_tarball
from .conftest import SHARED_DATA, needs_shared


def run(argv) -> int:
    parser = argparse.ArgumentParser(prog="distnn")
    register_data_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data"] + argv)
    return args.func(args)


def test_list_shows_every_dataset_and_its_state(capsys, tmp_path):
    assert run(["list", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"data directory: {tmp_path}" in out
    for name in ("mnist", "fashion_mnist", "cifar10", "mini_mnist"):
        assert name in out
    assert "missing 4 of 4" in out and "bundled" in out


@needs_shared
def test_verify_all_present(capsys):
    assert run(["verify"]) == 0  # $DISTNN_DATA_DIR: cifar10 absent is reported, not an error
    out = capsys.readouterr().out
    assert "mnist: OK" in out and "fashion_mnist: OK" in out and "cifar10: MISSING" in out
    assert run(["verify", "cifar10"]) == 1  # asked for by name: an error


def test_verify_reports_a_corrupt_file(capsys, tmp_path):
    (tmp_path / "mnist").mkdir()
    for f in catalog.MNIST.files:
        (tmp_path / "mnist" / f.name).write_bytes(b"junk")
    assert run(["verify", "mnist", "--data-dir", str(tmp_path)]) == 1
    assert "md5 check failed" in capsys.readouterr().out
    assert run(["verify", "imagenet"]) == 2


@needs_shared
def test_download_from_a_mirror(monkeypatch, capsys, tmp_path):
    spec = dataclasses.replace(catalog.MNIST, mirrors=((SHARED_DATA / "mnist").as_uri() + "/",))
    monkeypatch.setitem(catalog.SPECS, "mnist", spec)
    assert run(["download", "mnist", "mini_mnist", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "mnist: OK" in out and "bundled" in out
    assert len(list((tmp_path / "mnist").iterdir())) == 4
    broken = dataclasses.replace(catalog.CIFAR10, mirrors=("file:///nonexistent/",))
    monkeypatch.setitem(catalog.SPECS, "cifar10", broken)
    assert run(["download", "cifar10", "--data-dir", str(tmp_path)]) == 1
    assert "cifar-10-python.tar.gz" in capsys.readouterr().err


def test_convert_mini_and_cifar(tmp_path, capsys):
    out = tmp_path / "mini.h5"
    assert run(["convert", "mini_mnist", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    for split in ("train", "test"):
        src = get_dataset("mini_mnist", split)
        with H5Dataset(out, split) as h5:
            everything = np.arange(len(src))
            np.testing.assert_array_equal(h5.read(everything), src.read(everything))
            np.testing.assert_array_equal(h5.labels, src.labels)
    (tmp_path / "cifar10").mkdir()
    write_tarball(tmp_path / "cifar10" / "cifar-10-python.tar.gz")
    args = ["convert", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "c.h5")]
    assert run(args) == 1  # not the canonical archive: md5 refuses it
    assert "md5 check failed" in capsys.readouterr().err
    assert run(args + ["--no-verify"]) == 0
    with H5Dataset(tmp_path / "c.h5", "train") as h5:
        assert len(h5) == 30 and h5.image_shape == (32, 32, 3) and h5.class_names[0] == "airplane"
