"""data.preprocess (distnn/data/preprocess.py): mean_image and pca_whiten against float64 NumPy
references written from their formulas, the whitened training covariance, the top k components,
sums that add up to the same bits from any sharding, the checkpoint round trip, a real run
through every place a checkpoint's preprocessing is applied (the batches, the test split,
`distnn evaluate`, predict, features, ensembles, ONNX), and the bad inputs.
The same statistics under `mpiexec -n 2`: tests/distributed/test_mpi_preprocess.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from distnn.cli import main
from distnn.comm import LocalCommunicator
from distnn.config import ConfigError, from_dict
from distnn.data import ArrayDataset, Preprocess, get_dataset
from distnn.data import preprocess as pre
from distnn.train.checkpoint import Snapshot, load_checkpoint, save_checkpoint
from distnn.train.errors import CheckpointError
from distnn.train.run import train
from distnn.train.setup import load_splits
from tests.config_harness import Recorder, dense_wb, read_h5, run, softmax_reference, toy_h5
from tests.test_bad_input import bad_input
from tests.train.runs import metrics, write_config

H, W, C = 4, 4, 2
D = H * W * C


def images_with_structure(n: int = 200, seed: int = 0) -> np.ndarray:
    """uint8 (n, 4, 4, 2): three strong latent directions plus pixel noise, so the covariance
    has a few large, well separated eigenvalues above a noise floor (none repeated)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(0, 1, (n, 3)) * np.array([40.0, 25.0, 12.0])
    mixing = rng.normal(0, 1, (3, D))
    x = 128 + latent @ mixing + rng.normal(0, 6, (n, D))
    return np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(n, H, W, C)


def dataset(images: np.ndarray) -> ArrayDataset:
    return ArrayDataset(images, np.zeros(len(images), np.int64), ("a",), "toy", "train")


def reference_pca(images: np.ndarray, k: int, eps: float):
    """(mean (D,), eigenvalues (k,), whitening (D, k)) in float64 from the definition: x / 255
    flattened, the population covariance of the centred data, its eigenvectors by descending
    eigenvalue, each made positive at its largest-magnitude entry, divided by sqrt(lam + eps)."""
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    mu = x.mean(axis=0)
    centred = x - mu
    lam, v = np.linalg.eigh(centred.T @ centred / len(x))
    order = np.argsort(lam)[::-1][:k]
    lam, v = lam[order], v[:, order]
    for j in range(k):
        if v[np.argmax(np.abs(v[:, j])), j] < 0:
            v[:, j] = -v[:, j]
    return mu, lam, v / np.sqrt(lam + eps)


def whiten(images: np.ndarray, mu, w) -> np.ndarray:
    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    return (x - mu) @ w


# -- the statistics and the transforms against their definitions --------------------------------
def test_mean_image_subtracts_the_average_training_image_and_divides_nothing():
    images = images_with_structure()
    fitted = pre.fit(dataset(images), "mean_image")
    mean = images.astype(np.float64).mean(axis=0) / 255.0
    np.testing.assert_allclose(fitted.arrays["mean_image"], mean, rtol=0, atol=1e-7)
    out = fitted.apply(images[:9])
    assert out.dtype == np.float32 and out.shape == (9, H, W, C)
    np.testing.assert_allclose(out, images[:9] / 255.0 - mean, rtol=0, atol=1e-6)
    # Floats are taken as already scaled to 0..1, as to_float takes them.
    floats = (images[:9] / np.float32(255)).astype(np.float32)
    np.testing.assert_allclose(fitted.apply(floats), images[:9] / 255.0 - mean, atol=1e-6)


def test_pca_whiten_matches_a_float64_reference():
    images = images_with_structure()
    fitted = pre.fit(dataset(images), "pca_whiten", components=0, eps=1e-5)
    mu, lam, w = reference_pca(images, D, 1e-5)
    np.testing.assert_allclose(fitted.arrays["pca_mean"].reshape(-1), mu, rtol=0, atol=1e-7)
    np.testing.assert_allclose(fitted.arrays["pca_eigenvalues"], lam, rtol=1e-9, atol=1e-15)
    assert lam[0] > 10 * lam[3]  # the three latent directions come first
    np.testing.assert_allclose(fitted.arrays["pca_whitening"], w, rtol=1e-5, atol=1e-5)
    assert fitted.arrays["pca_eps"].tolist() == [1e-5]
    out = fitted.apply(images[:11])
    assert out.dtype == np.float32 and out.shape == (11, 1, 1, D)
    np.testing.assert_allclose(out.reshape(11, D), whiten(images[:11], mu, w), atol=2e-5)


def test_the_whitened_training_covariance_is_the_identity():
    images = images_with_structure()
    fitted = pre.fit(dataset(images), "pca_whiten", eps=1e-12)  # all components, eps tiny
    y = fitted.apply(images).reshape(len(images), D).astype(np.float64)
    np.testing.assert_allclose(y.mean(axis=0), 0.0, atol=1e-5)
    centred = y - y.mean(axis=0)
    np.testing.assert_allclose(centred.T @ centred / len(y), np.eye(D), atol=1e-4)


def test_pca_components_k_keeps_the_top_k():
    images = images_with_structure()
    k = 4
    fitted = pre.fit(dataset(images), "pca_whiten", components=k, eps=1e-5)
    mu, lam, w = reference_pca(images, D, 1e-5)
    assert fitted.components == k and fitted.output_shape((H, W, C)) == (1, 1, k)
    np.testing.assert_allclose(fitted.arrays["pca_eigenvalues"], lam[:k], rtol=1e-9)
    np.testing.assert_allclose(fitted.arrays["pca_whitening"], w[:, :k], rtol=1e-5, atol=1e-5)
    out = fitted.apply(images).reshape(len(images), k)
    np.testing.assert_allclose(out, whiten(images, mu, w[:, :k]), atol=2e-5)
    # Each kept component's variance over the training set is lam / (lam + eps).
    np.testing.assert_allclose(out.astype(np.float64).var(axis=0), lam[:k] / (lam[:k] + 1e-5),
                               rtol=1e-4)


def test_shard_sums_add_up_to_the_same_bits_in_any_order():
    images = images_with_structure(n=101)
    ds = dataset(images)
    whole = pre.shard_sums(ds, "pca_whiten", block_values=7 * D)
    parts = [pre.shard_sums(ds, "pca_whiten", rank, 3, block_values=5 * D) for rank in range(3)]
    for key in ("sum", "outer"):
        assert np.array_equal(parts[2][key] + parts[0][key] + parts[1][key], whole[key])
        x = images.reshape(len(images), D).astype(np.int64)  # exact integers
        want = x.sum(axis=0) if key == "sum" else x.T @ x
        assert np.array_equal(whole[key], want.astype(np.float64))
    added = {k: parts[1][k] + parts[2][k] + parts[0][k] for k in whole}
    a = pre.fit_sums("pca_whiten", added, len(ds), ds.image_shape, 255.0, 5)
    b = pre.fit(ds, "pca_whiten", components=5)
    assert all(np.array_equal(a.arrays[k], b.arrays[k]) for k in a.arrays)


def test_a_samples_whitened_values_do_not_depend_on_its_batch():
    # train.invariant feeds each rank its share of the groups: a sample must get the same bits
    # alone, in any batch and on any number of BLAS threads. The matrix sits on a grid per
    # column, so that pixels times it sum exactly in float64.
    from threadpoolctl import threadpool_limits

    images = images_with_structure(n=150)
    fitted = pre.fit(dataset(images), "pca_whiten", eps=1e-5)
    w = fitted.arrays["pca_whitening"].astype(np.float64)
    _, e = np.frexp(np.abs(w).max(axis=0))
    steps = w / np.ldexp(1.0, e - 24)
    assert np.array_equal(steps, np.round(steps)) and np.abs(steps).max() <= 2 ** 24
    whole = fitted.apply(images)
    for threads in (1, 2):
        with threadpool_limits(threads):
            alone = np.concatenate([fitted.apply(images[i:i + 1]) for i in range(150)])
            shifted = np.concatenate([fitted.apply(images[:7]), fitted.apply(images[7:])])
        assert np.array_equal(alone, whole) and np.array_equal(shifted, whole)


def test_images_of_another_shape_are_refused():
    fitted = pre.fit(dataset(images_with_structure()), "pca_whiten", components=3)
    with pytest.raises(ValueError, match=r"images of shape \(5, 4, 4, 1\), expected \(n, 4, 4, "
                                         r"2\) \(the images pca_whiten was fitted on\)"):
        fitted.apply(np.zeros((5, 4, 4, 1), np.uint8))
    with pytest.raises(ValueError, match=r"images of shape \(28, 28, 1\), expected \(4, 4, 2\)"):
        fitted.output_shape((28, 28, 1))
    with pytest.raises(ValueError, match="pca_components 33 exceeds D = 32"):
        pre.fit(dataset(images_with_structure()), "pca_whiten", components=33)


# -- checkpoints -------------------------------------------------------------------------------
def snapshot(normalization) -> Snapshot:
    return Snapshot(model={"dense1.W": np.ones((3, 2), np.float32)}, optimizer={"t": 1},
                    normalization=normalization, step=1, epoch=0, step_in_epoch=1,
                    config_yaml="name: x\n", model_spec=[{"type": "dense", "units": 2}])


@pytest.mark.parametrize("kind", ["mean_image", "pca_whiten"])
def test_the_kind_and_its_arrays_round_trip_through_a_checkpoint(tmp_path, kind):
    fitted = pre.fit(dataset(images_with_structure()), kind, components=5)
    save_checkpoint(snapshot(fitted), tmp_path / "c.h5")
    back = load_checkpoint(tmp_path / "c.h5").normalization
    assert isinstance(back, Preprocess) and back.kind == kind
    assert sorted(back.arrays) == sorted(fitted.arrays)
    for name, arr in fitted.arrays.items():
        assert back.arrays[name].dtype == arr.dtype and np.array_equal(back.arrays[name], arr)


def test_mean_and_std_alone_still_load_as_the_per_channel_tuple(tmp_path):
    mean, std = np.array([0.5, 0.25], np.float32), np.array([0.2, 0.1], np.float32)
    save_checkpoint(snapshot((mean, std)), tmp_path / "c.h5")
    back = load_checkpoint(tmp_path / "c.h5").normalization
    assert isinstance(back, tuple)
    assert np.array_equal(back[0], mean) and np.array_equal(back[1], std)


@pytest.mark.parametrize("case", ["negative eigenvalue", "mixed kinds", "matrix shape"])
def test_invalid_stored_preprocessing_is_one_line(tmp_path, case):
    fitted = pre.fit(dataset(images_with_structure()), "pca_whiten", components=3)
    arrays = fitted.arrays
    if case == "negative eigenvalue":
        arrays["pca_eigenvalues"] = np.array([1.0, -1.0, 0.5])
        message = (r"pca_whiten: pca_eigenvalues of shape \(3,\), expected \(3,\) values "
                   r">= 0")
    elif case == "mixed kinds":
        arrays["mean"] = np.zeros(2, np.float32)
        message = (r"arrays \['mean', 'pca_eigenvalues', 'pca_eps', 'pca_mean', "
                   r"'pca_whitening'\] are no preprocessing; expected mean \+ std "
                   r"\(channel_mean_std\); mean_image \(mean_image\); ")
    else:
        arrays["pca_whitening"] = np.zeros((31, 3), np.float32)
        message = (r"pca_whiten: pca_whitening of shape \(31, 3\), expected \(32, k\) with "
                   r"1 <= k <= 32")
    path = tmp_path / "c.h5"
    save_checkpoint(snapshot(fitted), path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{path}: stored normalisation is invalid: ")
    assert re.search(message, text), text


# -- runs: the batches, the test split and the checkpoint ---------------------------------------
@pytest.mark.parametrize("kind", ["mean_image", "pca_whiten"])
def test_a_run_trains_and_scores_on_the_preprocessed_inputs(tmp_path, monkeypatch, kind):
    rec = Recorder(monkeypatch)
    data = toy_h5(tmp_path, n_train=60)  # (4, 4, 1) images: D = 16
    result, rd = run(tmp_path, data, train={"epochs": 1, "global_batch": 25},
                     data={"preprocess": kind, "val_size": 10,
                           "pca_components": 6 if kind == "pca_whiten" else 0})
    images, _ = read_h5(data, "train")
    kept = np.unique(np.concatenate([b.indices for b in rec.batches]))
    assert len(kept) == 50  # the hold-out excluded from the statistics
    if kind == "mean_image":
        mean = images[kept].astype(np.float64).mean(axis=0) / 255.0

        def transform(x):
            return x / 255.0 - mean
    else:
        mu, _, w = reference_pca(images[kept], 6, 1e-5)

        def transform(x):
            return whiten(x, mu, w).reshape(len(x), 1, 1, 6)
    for b in rec.batches:
        np.testing.assert_allclose(b.x, transform(b.raw), rtol=0, atol=5e-5)
    assert result.model.input_shape == ((4, 4, 1) if kind == "mean_image" else (1, 1, 6))
    stored = load_checkpoint(rd / "checkpoints" / "last.h5").normalization
    assert isinstance(stored, Preprocess) and stored.kind == kind
    test_images, test_labels = read_h5(data, "test")
    wt, bt = dense_wb(result.model, result.model.params)
    want = softmax_reference(transform(test_images), test_labels, wt, bt)[0]
    assert metrics(rd)[-1]["split"] == "test"
    assert metrics(rd)[-1]["loss"] == pytest.approx(want, rel=1e-5)


# -- a pca_whiten run on mini MNIST through every reader of a checkpoint -----------------------
DENSE10 = [{"type": "flatten"}, {"type": "dense", "units": 10}]


def mini_config(kind: str, seed: int = 1):
    return from_dict({"name": kind, "seed": seed, "model": DENSE10,
                      "data": {"dataset": "mini_mnist", "train_size": 600, "val_size": 100,
                               "preprocess": kind,
                               "pca_components": 40 if kind == "pca_whiten" else 0},
                      "train": {"epochs": 1, "global_batch": 50},
                      "optimizer": {"name": "momentum", "mu": 0.9},
                      "schedule": {"name": "constant", "base_lr": 0.02},
                      "early_stopping": {"enabled": False}})


@pytest.fixture(scope="module")
def mini_runs(tmp_path_factory):
    """A pca_whiten and a mean_image run of a dense net on 500 mini MNIST digits, 1 epoch."""
    out = {}
    for kind in ("pca_whiten", "mean_image"):
        rd = tmp_path_factory.mktemp(kind)
        result = train(mini_config(kind), LocalCommunicator(), rd)
        assert result.exit_code == 0
        out[kind] = (rd, result.test)
    return out


def test_distnn_evaluate_gives_the_runs_test_numbers(mini_runs, capsys):
    rd, test = mini_runs["pca_whiten"]
    ckpt = rd / "checkpoints" / "last.h5"
    stored = load_checkpoint(ckpt).normalization
    assert isinstance(stored, Preprocess) and stored.components == 40
    # fitted on the run's training split (the hold-out cut), as fit does it in one process
    fitted = pre.fit(load_splits(mini_config("pca_whiten")).train, "pca_whiten", 40)
    assert all(np.array_equal(stored.arrays[k], fitted.arrays[k]) for k in fitted.arrays)
    capsys.readouterr()
    assert main(["evaluate", str(ckpt), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["accuracy"] == test["accuracy"] and got["loss"] == test["loss"]
    assert got["n"] == 2000 and test["accuracy"] > 0.15  # better than chance after 10 steps


def test_predict_features_and_ensembles_apply_the_stored_preprocessing(mini_runs, tmp_path,
                                                                        capsys):
    import distnn
    from distnn.data import to_float

    rd, test = mini_runs["pca_whiten"]
    ckpt = rd / "checkpoints" / "last.h5"
    model = distnn.load(ckpt)
    assert model.input_shape == (28, 28, 1) and model.network.input_shape == (1, 1, 40)
    data = get_dataset("mini_mnist", "test")
    images = data.read(np.arange(2000))
    probs = model.predict(images)
    assert np.mean(probs.argmax(axis=1) == data.labels) == test["accuracy"]
    # distnn predict: an .npy of 5 digits, the same classes
    np.save(tmp_path / "x.npy", images[:5])
    capsys.readouterr()
    assert main(["predict", str(ckpt), str(tmp_path / "x.npy"), "--top", "1", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["top"][0]["index"] for line in lines] == probs[:5].argmax(axis=1).tolist()
    # distnn features: the codes of the last layer are the network's scores on whitened input
    out = tmp_path / "f.h5"
    assert main(["features", str(ckpt), "--layer", "dense1", "--split", "test",
                 "--out", str(out)]) == 0
    codes = get_dataset(str(out), "test").read(np.arange(8)).reshape(8, 10)
    scores = model.network.forward(to_float(images[:8], model.normalization), False)
    np.testing.assert_allclose(codes, scores, rtol=1e-6, atol=1e-6)
    # an ensemble of a pca_whiten and a mean_image run: each member scored as it was trained
    capsys.readouterr()
    assert main(["evaluate", "--json", "--ensemble", str(rd), str(mini_runs["mean_image"][0])
                 ]) == 0
    got = json.loads(capsys.readouterr().out)
    accuracies = [m["accuracy"] for m in got["members"]]
    assert accuracies == [test["accuracy"], mini_runs["mean_image"][1]["accuracy"]]


@pytest.mark.parametrize("kind", ["pca_whiten", "mean_image"])
def test_the_onnx_export_computes_distnns_predictions(mini_runs, kind):
    pytest.importorskip("onnxruntime")
    import distnn
    from distnn.export.onnx_graph import run_onnx, to_onnx

    rd, _ = mini_runs[kind]
    model = distnn.load(rd / "checkpoints" / "last.h5")
    proto = to_onnx(model.network, model.normalization)
    ops = [node.op_type for node in proto.graph.node]
    if kind == "pca_whiten":
        assert ops[:6] == ["Mul", "Transpose", "Flatten", "Sub", "MatMul", "Reshape"]
    else:
        assert ops[:2] == ["Mul", "Sub"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["N", 1, 28, 28]
    images = get_dataset("mini_mnist", "test").read(np.arange(64))
    _, probabilities = run_onnx(proto, images)
    np.testing.assert_allclose(probabilities, model.predict(images), rtol=0, atol=1e-5)


# -- bad input ---------------------------------------------------------------------------------
def test_normalize_false_with_another_kind_is_one_config_error():
    with pytest.raises(ConfigError) as info:
        from_dict({"data": {"normalize": False, "preprocess": "mean_image"}})
    assert str(info.value) == ("data.preprocess: mean_image with data.normalize: false; expected "
                               "data.normalize: true (it turns preprocessing on), or preprocess "
                               "channel_mean_std")
    assert from_dict({"data": {"normalize": False}}).data.preprocess == "channel_mean_std"


def test_pca_components_above_d_is_one_line_and_exit_2(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", model=DENSE10,
                       data={"preprocess": "pca_whiten", "pca_components": 785})
    err = bad_input(["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert err == ("distnn train [rank 0]: data.pca_components: 785, expected at most D = 784, "
                   "the values of one mini_mnist image (28, 28, 1) (0: all of them)")
