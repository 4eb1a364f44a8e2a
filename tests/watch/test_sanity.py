"""`distnn sanity`: the four checks of distnn/watch/sanity.py on the bundled configs, each shown
able to fail (a bug injected into a real layer's backward pass, a far-off initial loss, too few
steps, an L2 that adds nothing), and bad input as one line with exit 2.

The bundled configs pass all four checks. They did not before their output layer got `init:
small` (std 0.01): with the default He initialisation (std sqrt(2 / fan_in), a gain meant for a
ReLU that follows) the scores at initialisation spread with std ~2 and the loss started at
3.5-4.3 instead of ln(10) = 2.30; `test_he_output_init_fails_the_initial_loss` keeps that case.

CIFAR-10 is not on this machine and no 3-channel dataset is: `test_cifar10_model_on_stand_in`
runs `distnn sanity cifar10` unchanged (model, optimizer, schedule, val_size) on a stand-in with
CIFAR-10's shape and sizes (50000 / 10000 images of 32x32x3, 10 classes) made of Fashion-MNIST
images padded to 32x32 and tinted per image; what it proves is the cifar10 model's checks, not
anything about CIFAR-10's pixels.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from distnn.cli import main
from distnn.config.loading import bundled_config_path
from distnn.data import Dataset, get_dataset
from distnn.exit_codes import ExitCode
from distnn.nn import Sequential
from distnn.nn.activations import ReLU
from distnn.nn.dense import Dense
from distnn.train import setup
from distnn.watch import sanity_checks as sc

ROOT = Path(__file__).resolve().parents[2]


def _shared_data() -> Path:
    env = os.environ.get("DISTNN_DATA_DIR")
    if env and (Path(env) / "mnist").is_dir():
        return Path(env)
    return ROOT.parent / "shared" / "data"


SHARED = _shared_data()
needs_shared = pytest.mark.skipif(
    not ((SHARED / "mnist").is_dir() and (SHARED / "fashion-mnist").is_dir()),
    reason=f"no MNIST / Fashion-MNIST originals in {SHARED}")
NAMES = ("initial loss", "regularisation", "overfit 20", "gradient check")
LN10 = math.log(10)  # 2.302585...
QUICK_LOSS = 2.3397  # check 1 of quickstart: its float64 replay is below


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("DISTNN_DATA_DIR", str(SHARED))
    monkeypatch.setenv("DISTNN_OFFLINE", "1")


def sanity(capsys, *argv: str) -> tuple[int, dict[str, tuple[str, bool]], str]:
    """Exit code, {check name: (figure, ok)} and stderr of an in-process `distnn sanity`."""
    code = main(["sanity", *argv])
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert lines[0].startswith("sanity "), out
    checks = {}
    for line in lines[1:]:
        m = re.fullmatch(r"(.{16})(.*): (ok|FAILED)", line)
        assert m, line
        checks[m[1].strip()] = (m[2], m[3] == "ok")
    return code, checks, err


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, (pattern, text)
    return float(m[1])


def he_output_init(name: str, tmp_path: Path) -> str:
    """The bundled config `name` with its output layer back on the default He initialisation."""
    raw = yaml.safe_load(bundled_config_path(name).read_text())
    assert raw["model"][-1]["type"] == "dense" and raw["model"][-1].pop("init") == "small"
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


# -- the bundled configs -------------------------------------------------------------------------
BUNDLED = [
    # config, check 1's loss (float32, first batch), check 2's l2 and source
    ("quickstart", QUICK_LOSS, "0.01 (train.l2 is 0"),
    # The suite's time budget: the other two bundled configs run with -m slow.
    pytest.param("mnist", None, "0.0001 (train.l2)", marks=[needs_shared, pytest.mark.slow]),
    pytest.param("fashion_mnist", None, "0.0001 (train.l2)",
                 marks=[needs_shared, pytest.mark.slow]),
]


@pytest.mark.parametrize("name,loss,l2", BUNDLED)
def test_bundled_configs_pass(capsys, name, loss, l2):
    code, checks, err = sanity(capsys, name)
    assert code == ExitCode.OK and err == "", checks
    assert all(ok for _, ok in checks.values()) and list(checks) == list(NAMES)
    figure = checks["initial loss"][0]
    assert f"expected ln(10) = {LN10:.4f} within 10%" in figure
    got = number(r"^(\S+) on ", figure)
    assert abs(got / LN10 - 1) < 0.10
    if loss is not None:
        assert got == pytest.approx(loss, abs=2e-3)
    assert number(r"\(([+-][\d.]+)%", figure) == pytest.approx((got / LN10 - 1) * 100, abs=0.06)
    assert f"with l2 {l2}" in checks["regularisation"][0]
    assert 1 <= number(r"after (\d+) steps", checks["overfit 20"][0]) <= 200
    assert number(r"max rel error (\S+) ", checks["gradient check"][0]) <= 1e-5


@pytest.mark.parametrize("name,loss", [("quickstart", 4.3022),
                                       pytest.param("mnist", 3.7369,
                                                    marks=[needs_shared, pytest.mark.slow])])
def test_he_output_init_fails_the_initial_loss(capsys, tmp_path, name, loss):
    """The output layer on He initialisation: only the initial loss fails (exit 1)."""
    code, checks, _ = sanity(capsys, he_output_init(name, tmp_path))
    figure, ok = checks["initial loss"]
    assert not ok and number(r"^(\S+) on ", figure) == pytest.approx(loss, abs=2e-3)
    assert all(checks[n][1] for n in NAMES[1:]), checks
    assert code == ExitCode.FAILED


def test_quickstart_initial_loss_against_a_float64_reference(capsys):
    """Check 1's figure is the mean softmax loss of the seed-0 model on training's first batch:
    epoch 0's order of the 7000 samples kept after the 1000-sample validation hold-out,
    normalised with the kept samples' mean and std. Replayed here from those formulas, with
    the model in float64 and the loss written out."""
    _, checks, _ = sanity(capsys, "quickstart")
    full = get_dataset("mini_mnist", "train")
    held_order = np.random.default_rng([0, 7]).permutation(len(full))  # setup.load_splits
    kept = np.sort(held_order[1000:])
    assert len(kept) == 7000
    first = kept[np.random.default_rng([0x5348, 0, 0]).permutation(7000)[:64]]  # data/README
    pixels = full.read(kept).astype(np.float64) / 255
    mean, std = pixels.mean(), pixels.std()
    x = (full.read(first).astype(np.float64) / 255 - mean) / std
    model = Sequential(yaml.safe_load(bundled_config_path("quickstart").read_text())["model"],
                       (28, 28, 1), seed=0, dtype=np.float64)
    s = model.forward(x, training=True)
    s = s - s.max(axis=1, keepdims=True)
    want = float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[np.arange(64), full.labels[first]]))
    assert want == pytest.approx(QUICK_LOSS, abs=2e-3)
    assert number(r"^(\S+) on 64 samples", checks["initial loss"][0]) == pytest.approx(
        want, abs=1e-3)


def test_regularisation_figure_is_the_l2_penalty(capsys):
    """Check 2's increase is l2/2 * sum(W^2) over the conv and dense weights at initialisation
    (biases are not decayed); train.l2 is 0 in quickstart, so the check uses 1e-2."""
    _, checks, _ = sanity(capsys, "quickstart")
    specs = yaml.safe_load(bundled_config_path("quickstart").read_text())["model"]
    model = Sequential(specs, (28, 28, 1), seed=0, dtype=np.float64)
    squares = sum(float(np.sum(layer.p["W"] ** 2)) for layer in model.layers if "W" in layer.p)
    figure = checks["regularisation"][0]
    assert "with l2 0.01 (train.l2 is 0: a clear value)" in figure
    assert number(r", \+(\S+)$", figure) == pytest.approx(0.01 / 2 * squares, rel=1e-3)


@needs_shared
def test_data_dir_option_is_used(capsys, tmp_path, monkeypatch):
    """--data-dir wins over $DISTNN_DATA_DIR (here an empty folder)."""
    monkeypatch.setenv("DISTNN_DATA_DIR", str(tmp_path))
    code, checks, _ = sanity(capsys, "mnist", "--data-dir",
                             str(SHARED), "--steps", "1")
    assert list(checks) == list(NAMES) and code == ExitCode.FAILED  # one step cannot overfit


# -- each check can fail -------------------------------------------------------------------------
def test_far_off_initial_loss_fails(capsys, tmp_path):
    """Five He-initialised dense layers with no activation between them: He's gain of 2 per
    layer assumes a ReLU that halves the variance, so here the scores' variance grows ~2x per
    layer and the initial loss is far above ln(10)."""
    path = tmp_path / "linear.yaml"
    path.write_text(yaml.safe_dump({
        "name": "linear", "data": {"dataset": "mini_mnist", "val_size": 1000},
        "model": [{"type": "flatten"}] + [{"type": "dense", "units": 64}] * 4
                 + [{"type": "dense", "units": 10}]}))
    code, checks, _ = sanity(capsys, str(path))
    figure, ok = checks["initial loss"]
    assert not ok and number(r"^(\S+) on ", figure) > 2 * LN10
    assert code == ExitCode.FAILED


def test_too_few_steps_fail_the_overfit(capsys, tmp_path):
    code, checks, _ = sanity(capsys, "quickstart", "--steps", "1")
    figure, ok = checks["overfit 20"]
    assert not ok and "at best after 1 steps" in figure and "expected 100 %" in figure
    assert all(checks[n][1] for n in NAMES if n != "overfit 20")
    assert code == ExitCode.FAILED


def test_l2_that_adds_nothing_fails_regularisation(capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(Sequential, "l2_penalty", lambda self: 0.0)
    code, checks, _ = sanity(capsys, "quickstart")
    figure, ok = checks["regularisation"]
    assert not ok and figure.endswith("+0")
    assert code == ExitCode.FAILED


def test_scaled_dense_weight_gradient_fails_the_gradient_check(capsys, tmp_path, monkeypatch):
    """Dense.backward's weight gradient 5 % too large: d(data loss)/dW is off by a factor 1.05
    (the L2 term added after it is right), a relative error of 0.05 / 2.05 = 2.4e-2 where the
    L2 term is negligible and more where it cancels part of the data term."""
    backward = Dense.backward

    def scaled(self, dout):
        dx = backward(self, dout)
        self.g["W"] *= 1.05
        return dx

    monkeypatch.setattr(Dense, "backward", scaled)
    code, checks, _ = sanity(capsys, "quickstart")
    figure, ok = checks["gradient check"]
    assert not ok and re.search(r"\(worst dense\d+\.W\)", figure), figure
    assert number(r"max rel error (\S+) ", figure) > 2e-2
    assert checks["initial loss"][1] and checks["regularisation"][1]
    assert code == ExitCode.FAILED


def test_relu_passing_gradient_of_negative_inputs_fails(capsys, tmp_path, monkeypatch):
    """ReLU.backward without its mask. In quickstart every ReLU follows a conv or dense layer
    and is fused into it; after a conv the mask is applied in the conv's backward pass
    (fused_backward), so only the ReLU after dense7 runs this code: the layers before it get
    wrong gradients."""
    calls = []

    def leaky(self, dout):
        calls.append(self.name)
        return dout

    monkeypatch.setattr(ReLU, "backward", leaky)
    code, checks, _ = sanity(capsys, "quickstart")
    figure, ok = checks["gradient check"]
    assert not ok and re.search(r"\(worst (input|conv0|conv3|dense7)\.?", figure), figure
    assert number(r"max rel error (\S+) ", figure) > 1e-2
    assert set(calls) == {"relu1", "relu4", "relu8"}  # called, but a no-op after the convs
    assert code == ExitCode.FAILED


def test_svm_model_with_batchnorm_and_dropout(capsys, tmp_path):
    """The SVM's initial loss is C - 1 = 9 for diffuse scores (every margin ~1); BatchNorm
    (running statistics for predict), tanh, ELU, sigmoid, average pooling, dropout and Adam all
    pass through the four checks."""
    path = tmp_path / "svm.yaml"
    path.write_text(yaml.safe_dump({
        "name": "svm", "data": {"dataset": "mini_mnist", "val_size": 1000},
        "model": [{"type": "conv", "filters": 8, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
                  {"type": "relu"}, {"type": "maxpool", "size": 2},
                  {"type": "conv", "filters": 16, "kernel": 3, "pad": 1}, {"type": "tanh"},
                  {"type": "avgpool", "size": 2}, {"type": "flatten"},
                  {"type": "dense", "units": 32}, {"type": "batchnorm"}, {"type": "elu"},
                  {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 32},
                  {"type": "sigmoid"}, {"type": "dense", "units": 10, "init": "small"}],
        "train": {"loss": "svm"}, "optimizer": {"name": "adam"},
        "schedule": {"name": "constant", "base_lr": 0.001}}))
    code, checks, _ = sanity(capsys, str(path))
    assert "expected C-1 = 9 within 10%" in checks["initial loss"][0]
    assert "(adam, lr 0.001;" in checks["overfit 20"][0]
    assert all(ok for _, ok in checks.values()), checks
    assert code == ExitCode.OK


def test_checks_leave_masks_and_batchnorm_state_alone():
    """Checks 1 and 2 see the same dropout masks (so the L2 check's increase is exactly the
    penalty) and put BatchNorm's running statistics back."""
    model = Sequential([{"type": "flatten"}, {"type": "dense", "units": 16},
                        {"type": "batchnorm"}, {"type": "relu"}, {"type": "dropout"},
                        {"type": "dense", "units": 4}], (3, 3, 1), seed=1)
    rng = np.random.default_rng(0)
    batch = sc.Samples(rng.standard_normal((8, 3, 3, 1)).astype(np.float32),
                       np.arange(8) % 4, np.arange(100, 108))
    state = model.state.copy()
    check, loss = sc.initial_loss(model, batch, "softmax", seed=3)
    assert np.array_equal(model.state, state)
    reg = sc.regularisation(model, batch, "softmax", 3, 0.5, loss)
    assert np.array_equal(model.state, state) and reg.ok
    w1, w2 = model.layers[1].p["W"], model.layers[5].p["W"]
    penalty = 0.5 / 2 * (np.sum(w1.astype(np.float64) ** 2) + np.sum(w2.astype(np.float64) ** 2))
    assert number(r", \+(\S+)$", reg.figure) == pytest.approx(penalty, rel=1e-3)


def test_gradient_check_skips_a_relu_kink_and_counts_it(monkeypatch):
    """A dense unit whose pre-activation is exactly 0 on a sample (dyadic numbers: the sums are
    exact): the backward pass takes the ReLU's slope 0 there, the centred difference averages
    0 and 1, so its bias entry misses by far; the check skips it as a kink, says so, and passes.
    Without the noise that would otherwise move the samples off the kink."""
    monkeypatch.setattr(sc, "TIE_NOISE", 0.0)
    model = Sequential([{"type": "flatten"}, {"type": "dense", "units": 3}, {"type": "relu"},
                        {"type": "dense", "units": 2}], (2, 2, 1), dtype=np.float64)
    dense = model.layers[1]
    dense.p["W"][...] = [[0.5, -0.25, 1], [0.25, 0.5, -0.5], [-1, 0.75, 0.25], [0.5, 0.5, 0.5]]
    x = np.array([[1, 0.5, -0.5, 2], [0.25, -1, 1, 0.5]], np.float32).reshape(2, 2, 2, 1)
    # sample 0, unit 0: 0.5 + 0.125 + 0.5 + 1 = 2.125, so b = -2.125 puts it on the kink
    dense.p["b"][...] = [-2.125, 0.5, 0.25]
    check, entries = sc.gradient_check(model, sc.Samples(x, np.array([0, 1]), np.arange(2)),
                                       "softmax", seed=0)
    bias = next(e for e in entries if e.where == "dense1.b")
    assert (bias.kinks, bias.checked) == (1, 2)  # all 3 entries drawn; one skipped
    assert check.ok and "at ReLU/max-pool kinks skipped" in check.figure, check.figure
    assert int(number(r", (\d+) at ReLU", check.figure)) == sum(e.kinks for e in entries) >= 1


# -- the cifar10 model ---------------------------------------------------------------------------
class TintedFashion(Dataset):
    """CIFAR-10's shape and size from Fashion-MNIST: image i is Fashion-MNIST's image i padded
    to 32x32, its ink in one colour and its background in another, both fixed by i."""

    def __init__(self, base: Dataset, n: int, split: str) -> None:
        self.base, self.split = base, split
        self.name, self.provenance = "cifar10 stand-in", "tinted Fashion-MNIST (tests)"
        self.labels = base.labels[:n]
        self.image_shape, self.num_classes = (32, 32, 3), 10
        self.class_names = base.class_names

    def read(self, indices: np.ndarray) -> np.ndarray:
        idx = self.check_indices(indices)
        ink = np.pad(self.base.read(idx)[..., 0], ((0, 0), (2, 2), (2, 2)))
        ink = ink[..., None].astype(np.float32) * np.float32(1 / 255)
        colour = ((idx[:, None] * np.array([7, 13, 29])) % 71 + 30) * 2.55  # 0.3-1.0 of 255
        paper = ((idx[:, None] * np.array([17, 5, 11])) % 51) * 2.55  # 0-0.5 of 255
        paper = paper.astype(np.float32)[:, None, None]
        rgb = paper + ink * (colour.astype(np.float32)[:, None, None] - paper)
        return rgb.round().astype(np.uint8)


@needs_shared
def test_cifar10_model_on_stand_in(capsys, monkeypatch):
    """The cifar10 config unchanged (conv stack, dropout 0.5, l2 5e-4, momentum, base_lr 0.05
    behind a one-epoch warmup over 45000 / 128 = 352 steps) on the stand-in data: every check
    passes, as for the other bundled configs."""
    real = get_dataset

    def fake(name, split, data_dir=None, **kwargs):
        if name != "cifar10":
            return real(name, split, data_dir, **kwargs)
        return TintedFashion(real("fashion_mnist", split, SHARED), 50000 if split == "train"
                             else 10000, split)

    monkeypatch.setattr(setup, "get_dataset", fake)
    code, checks, _ = sanity(capsys, "cifar10")
    assert abs(number(r"^(\S+) on 128", checks["initial loss"][0]) / LN10 - 1) < 0.10
    assert all(ok for _, ok in checks.values()), checks
    assert "with l2 0.0005 (train.l2)" in checks["regularisation"][0]
    assert "momentum, lr 0.005 to" in checks["overfit 20"][0]
    assert code == ExitCode.OK


# -- bad input -----------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,names", [
    (["no_such_config"], "config 'no_such_config'"),
    (["quickstart", "--set", "train.l2=-1"], "train.l2: -1.0 must be >= 0"),
    (["quickstart", "--set", "model=[{type: flatten}, {type: dense, units: 3}]"],
     "expected (10,)"),
    (["quickstart", "--set", "model=[{type: conv, filters: 0}]"], "filters=0"),
    (["quickstart", "--set", "data.dataset=no_such_set"], "unknown dataset 'no_such_set'"),
    (["quickstart", "--set", "data.dataset=/no/such/file.h5"], "/no/such/file.h5"),
    (["mnist", "--data-dir", "{empty}"], "dataset 'mnist' is missing"),
    (["quickstart", "--steps", "0"], "--steps 0, expected an integer >= 1"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, argv, names):
    argv = [a.replace("{empty}", str(tmp_path)) for a in argv]
    code = main(["sanity", *argv])
    out, err = capsys.readouterr()
    assert code == ExitCode.BAD_INPUT and out == ""
    assert err.count("\n") == 1 and err.startswith("distnn sanity: ") and names in err, err
    assert "Traceback" not in err


def test_entry_point_in_a_child_process():
    env = {**os.environ, "DISTNN_OFFLINE": "1", "DISTNN_DATA_DIR": str(SHARED)}
    proc = subprocess.run([sys.executable, "-m", "distnn.cli", "sanity", "quickstart"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("sanity quickstart: mini_mnist, 7000 training samples")
    assert [line[:16].strip() for line in lines[1:]] == list(NAMES)
    assert [line.rsplit(": ", 1)[1] for line in lines[1:]] == ["ok", "ok", "ok", "ok"]
    assert proc.returncode == ExitCode.OK and proc.stderr == ""
