"""The public Python API (distnn/api.py): distnn.train equals the command line to the bit,
distnn.load(...).predict equals the evaluation path, and Sequential's input gradient and
non-mutating backward."""

import json

import numpy as np
import pytest

import distnn
from distnn.comm import create_communicator
from distnn.data import get_dataset
from distnn.nn import Sequential, numerical_grad, rel_error
from distnn.train.checkpoint import load_checkpoint
from distnn.train.errors import CheckpointError
from distnn.train.evaluate_checkpoint import evaluate_checkpoint
from tests.train.runs import metrics, params, run, write_config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config run by `distnn train` and by distnn.train (in this process)."""
    tmp = tmp_path_factory.mktemp("api")
    cfg = write_config(tmp / "c.yaml", train={"epochs": 1, "max_steps": 6})
    out = run(["train", str(cfg), "--run-dir", str(tmp / "cli")])
    assert out.returncode == 0, out.stderr
    result = distnn.train(str(cfg), run_dir=tmp / "api")
    return tmp / "cli", result


def test_train_from_python_equals_the_command_line_bit_for_bit(runs):
    cli, result = runs
    assert result.ok and result.run_dir == cli.parent / "api"
    assert result.checkpoint == result.run_dir / "checkpoints" / "best.h5"
    a, b = params(cli / "checkpoints" / "last.h5"), params(result.run_dir / "checkpoints" /
                                                            "last.h5")
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(b[key], a[key], err_msg=key)
    test = next(m for m in metrics(cli) if m["split"] == "test")
    assert result.test == {"loss": test["loss"], "accuracy": test["accuracy"], "n": test["n"]}


def test_load_predict_equals_the_evaluation_path(runs):
    _, result = runs
    model = distnn.load(result.checkpoint)
    assert model.input_shape == (28, 28, 1) and model.class_names == tuple("0123456789")
    data = get_dataset("mini_mnist", "test")
    images = data.read(np.arange(len(data)))
    probs = model.predict(images, batch_size=300)
    assert probs.shape == (2000, 10) and np.allclose(probs.sum(axis=1), 1.0)
    want = evaluate_checkpoint(result.checkpoint, create_communicator("local"), None, "test",
                               None)
    assert float(np.mean(probs.argmax(axis=1) == data.labels)) == want["accuracy"]
    loss = -np.mean(np.log(probs[np.arange(2000), data.labels]))
    assert loss == pytest.approx(want["loss"], rel=1e-6)
    assert model.evaluate("mini_mnist") == {k: want[k] for k in ("accuracy", "loss", "n")}
    # Floats in 0..1 are the same pixels; one image alone gives its row (up to the rounding of
    # another batch); any thread count gives the same bits.
    np.testing.assert_allclose(model.predict(images[:7] / np.float32(255.0)), probs[:7],
                               rtol=1e-5)
    np.testing.assert_allclose(model.predict(images[3]), probs[3:4], rtol=1e-5)
    np.testing.assert_array_equal(model.predict(images[:300], 300, threads=1), probs[:300])


def test_bad_input_names_it(tmp_path, runs):
    bad = tmp_path / "x.h5"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="x.h5"):
        distnn.load(bad)
    model = distnn.load(runs[1].checkpoint)
    with pytest.raises(ValueError, match=r"images of shape \(2, 32, 32, 1\), expected "
                                         r"\(N, 28, 28, 1\)"):
        model.predict(np.zeros((2, 32, 32, 1), np.uint8))
    with pytest.raises(ValueError, match="dtype int64"):
        model.predict(np.zeros((2, 28, 28, 1), np.int64))
    with pytest.raises(ValueError, match=r"range over 0..255, expected 0..1"):
        model.predict(np.linspace(0, 255, 2 * 784).reshape(2, 28, 28, 1))
    with pytest.raises(ValueError, match="NaN"):
        model.predict(np.full((1, 28, 28, 1), np.nan, np.float32))


def test_an_old_checkpoint_without_inputs_takes_them_from_its_dataset(runs):
    snap = load_checkpoint(runs[1].checkpoint)
    snap.inputs = {}
    model = distnn.api.model_from(snap, runs[1].checkpoint)
    assert model.input_shape == (28, 28, 1) and len(model.class_names) == 10
    assert json.loads(json.dumps(snap.model_spec)) == snap.model_spec


SPECS = {
    "conv first": [{"type": "conv", "filters": 3, "kernel": 3, "pad": 1}, {"type": "tanh"},
                   {"type": "flatten"}, {"type": "dense", "units": 4}],
    "dense first": [{"type": "flatten"}, {"type": "dense", "units": 5}, {"type": "tanh"},
                    {"type": "dense", "units": 4}],
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_input_gradient_is_gradient_checked(name):
    rng = np.random.default_rng(3)
    model = Sequential(SPECS[name], (5, 4, 2), seed=1, dtype=np.float64, input_grad=True)
    x = rng.standard_normal((3, 5, 4, 2))
    r = rng.standard_normal((3, 4))
    model.forward(x, training=True)
    dx = model.backward(r)
    assert dx is not None and dx.shape == x.shape

    def f():
        return float(np.sum(model.forward(x, training=True) * r))

    idx, num = numerical_grad(f, x)
    assert rel_error(dx.reshape(-1)[idx], num) < 1e-7


@pytest.mark.parametrize("tail", [[{"type": "relu"}],
                                  [{"type": "relu"}, {"type": "dropout", "rate": 0.5}]])
@pytest.mark.parametrize("training", [True, False])
def test_backward_leaves_the_callers_array_untouched(tail, training):
    specs = [{"type": "flatten"}, {"type": "dense", "units": 6}, *tail]
    model = Sequential(specs, (2, 3, 1), seed=0, input_grad=True)
    x = np.random.default_rng(0).standard_normal((4, 2, 3, 1)).astype(np.float32)
    model.forward(x, training=training)
    dout = np.linspace(-1, 1, 24, dtype=np.float32).reshape(4, 6)
    kept = dout.copy()
    model.backward(dout)
    np.testing.assert_array_equal(dout, kept)


@pytest.mark.parametrize("specs", [[{"type": "flatten"}],
                                   [{"type": "flatten"}, {"type": "dropout", "rate": 0.3}]])
def test_forward_never_returns_a_view_of_the_callers_array(specs):
    model = Sequential(specs, (2, 3, 1))
    x = np.arange(12, dtype=np.float32).reshape(2, 2, 3, 1)
    out = model.forward(x, training=False)
    assert not np.may_share_memory(out, x)
    np.testing.assert_array_equal(out, x.reshape(2, 6))
