"""`distnn features`: the codes of a layer as a dataset file, the same bits on 1 and 2 ranks,
read back by `distnn train` (a linear classifier on the codes)."""

import h5py
import numpy as np
import pytest

from distnn.cli import main
from distnn.data import get_dataset, to_float
from distnn.nn import Sequential
from distnn.train.checkpoint import load_checkpoint
from tests.train.runs import TINY_MODEL, mpiexec, run, write_config


def test_codes_equal_the_models_forward_and_train_a_linear_classifier(tmp_path, pretrained):
    out = tmp_path / "codes.h5"
    done = run(["features", str(pretrained), "--layer", "maxpool5", "--dataset", "mini_mnist",
                "--out", str(out), "--batch", "300"])
    assert done.returncode == 0, done.stderr
    assert f"features of maxpool5 (392 values per sample) for train 8000, test 2000 written to " \
           f"{out}" in done.stdout
    snap = load_checkpoint(pretrained)
    model = Sequential(TINY_MODEL, (28, 28, 1))
    model.load_state_dict(snap.model)
    test = get_dataset("mini_mnist", "test")
    idx = np.arange(0, 2000, 97)
    x = to_float(test.read(idx), snap.normalization)
    for layer in model.layers[:6]:
        x = layer.forward(x, False)
    with h5py.File(out) as fh:
        assert fh["test/images"].dtype == np.float32 and fh["test/images"].shape == (2000, 7, 7, 8)
        np.testing.assert_allclose(fh["test/images"][idx], x, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(fh["test/labels"][()], test.labels)
    linear = write_config(tmp_path / "lin.yaml", model=[{"type": "flatten"},
                                                        {"type": "dense", "units": 10}],
                          data={"dataset": str(out), "val_size": 500},
                          train={"epochs": 1, "max_steps": 30})
    trained = run(["train", str(linear), "--run-dir", str(tmp_path / "lin")])
    assert trained.returncode == 0, trained.stderr
    accuracy = float(trained.stdout.split("test accuracy ")[1].split()[0])
    assert accuracy > 0.5  # 10 classes: chance is 0.1
    mpiexec()
    two = tmp_path / "two.h5"
    done = run(["features", str(pretrained), "--layer", "maxpool5", "--dataset", "mini_mnist",
                "--out", str(two), "--batch", "300"], ranks=2)
    assert done.returncode == 0, done.stderr
    with h5py.File(out) as a, h5py.File(two) as b:
        for split in ("train", "test"):  # the same forward batches on 1 and 2 ranks
            np.testing.assert_array_equal(a[f"{split}/images"][()], b[f"{split}/images"][()])


@pytest.mark.parametrize(("args", "message"), [
    (["--layer", "conv9"], "--layer conv9: not a layer of"),
    (["--layer", "conv0", "--out", "x.txt"], "--out x.txt: expected a .h5 file name"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, pretrained, args, message, capsys,
                                          monkeypatch):
    """In this process (distnn.cli.main, as the `distnn` script runs it)."""
    monkeypatch.chdir(tmp_path)
    code = main(["features", str(pretrained), "--out", str(tmp_path / "f.h5"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.h5")) and not list(tmp_path.glob(".*part"))


def test_an_existing_output_is_never_overwritten_unasked(tmp_path, pretrained, capsys):
    out = tmp_path / "f.h5"
    out.write_bytes(b"keep me")
    code = main(["features", str(pretrained), "--layer", "conv0", "--out", str(out)])
    assert code == 2 and "exists" in capsys.readouterr().err
    assert out.read_bytes() == b"keep me"
