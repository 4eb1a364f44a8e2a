"""Issue 20: the `data:` keys through a real training run: augment, normalize, val_size,
prefetch, dataset, data_dir. The harness (tiny HDF5 data, a dense model, spies that call
through) is in tests/test_config_effects.py; what a batch should hold is computed here from the
stored images.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from distnn.config import from_dict
from distnn.data import ArrayDataset, write_h5
from distnn.data.errors import DataError
from distnn.train.checkpoint import load_checkpoint
from distnn.train.setup import load_splits
from tests.config_harness import (
    Recorder,
    dense_wb,
    read_h5,
    run,
    softmax_reference,
    toy_h5,
)
from tests.data.conftest import SHARED_DATA, needs_shared
from tests.train.runs import metrics


@pytest.fixture
def rec(monkeypatch) -> Recorder:
    return Recorder(monkeypatch)


def stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of images / 255, in float64."""
    x = images.reshape(-1, images.shape[-1]) / 255.0
    return x.mean(axis=0), x.std(axis=0)


# -- augment -------------------------------------------------------------------------------------
PAD = 4


def crop_flip_of(raw: np.ndarray, got: np.ndarray) -> np.ndarray:
    """(n, 3) int: the (dy, dx, flip) for which got[i] is the window at rows dy.., columns dx..
    of raw[i] zero-padded by PAD, mirrored along W if flip. Asserts that exactly one fits."""
    n, h, w, _ = raw.shape
    padded = np.pad(raw, ((0, 0), (PAD, PAD), (PAD, PAD), (0, 0)))
    windows = np.moveaxis(sliding_window_view(padded, (h, w), axis=(1, 2)), 3, -1)
    target = got[:, None, None]  # windows: (n, dy, dx, h, w, c)
    plain = (windows == target).all(axis=(3, 4, 5))
    mirrored = (windows[..., ::-1, :] == target).all(axis=(3, 4, 5))
    fits = np.stack([plain, mirrored], axis=-1)  # (n, dy, dx, flip)
    assert (fits.sum(axis=(1, 2, 3)) == 1).all(), "a sample is no single crop + flip of its image"
    return np.argwhere(fits)[:, 1:]


def augmented_draws(rec: Recorder, mean, std) -> dict[tuple[int, int], tuple[int, int, int]]:
    """{(sample index, epoch): (dy, dx, flip)} recovered from the batches the trainer got."""
    out = {}
    for b in rec.batches:
        raw_aug = np.rint((b.x.astype(np.float64) * std + mean) * 255.0)
        assert np.abs(raw_aug - (b.x * std + mean) * 255.0).max() < 1e-3  # uint8 before scaling
        draws = crop_flip_of(b.raw, raw_aug.astype(np.uint8))
        for i, d in zip(b.indices.tolist(), draws.tolist(), strict=True):
            out[i, b.epoch] = tuple(d)
    return out


def test_augment_is_crop_pad_4_and_horizontal_flip_drawn_independently(tmp_path, monkeypatch):
    data = toy_h5(tmp_path, n_train=2000, n_test=8, hw=8)
    images, labels = read_h5(data, "train")
    # The first 1000 samples alone: each sample keeps its index but not its place in the epoch.
    half = write_h5(tmp_path / "half.h5", {
        split: ArrayDataset(x, y, ("a", "b", "c"), "toy", split)
        for split, (x, y) in (("train", (images[:1000], labels[:1000])),
                              ("test", read_h5(data, "test")))}, "toy", "")
    draws = {}
    for tag, file, batch in (("all", data, 250), ("half", half, 200)):
        rec = Recorder(monkeypatch)
        run(tmp_path, file, tag, data={"augment": True}, train={"epochs": 2,
                                                                 "global_batch": batch})
        draws[tag] = augmented_draws(rec, *stats(read_h5(file, "train")[0]))
        monkeypatch.undo()
    d = np.array([draws["all"][i, e] for i in range(2000) for e in (0, 1)])
    dy, dx, flip = d.T
    # Every offset of pad 4 (0..8 on each axis) with and without the flip occurs ...
    combos = {tuple(row) for row in d.tolist()}
    assert combos == {(y, x, f) for y in range(9) for x in range(9) for f in (0, 1)}
    # ... drawn independently: one offset does not follow the other, nor the flip either.
    assert abs(np.mean(dx == dy) - 1 / 9) < 0.03
    for a, b in ((dx, dy), (dx, flip), (dy, flip)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 0.08
    assert 0.45 < flip.mean() < 0.55 and abs(dx.mean() - 4) < 0.2 and abs(dy.mean() - 4) < 0.2
    # Keyed by (sample index, epoch): elsewhere in the epoch, the same draw; another epoch, a
    # new one.
    assert draws["half"] == {k: v for k, v in draws["all"].items() if k[0] < 1000}
    same = np.mean([draws["all"][i, 0] == draws["all"][i, 1] for i in range(2000)])
    assert same < 0.03  # 1/162 by chance


def test_no_augment_passes_the_stored_images(tmp_path, rec):
    data = toy_h5(tmp_path, n_train=40)
    run(tmp_path, data, data={"normalize": False})
    for b in rec.batches:
        np.testing.assert_array_equal(b.x, (b.raw * np.float32(1 / 255)).astype(np.float32))


# -- normalize, val_size ---------------------------------------------------------------------------
@pytest.mark.parametrize("normalize", [False, True])
def test_normalize_scales_batches_and_evaluation(tmp_path, rec, normalize):
    data = toy_h5(tmp_path, n_train=40)
    result, rd = run(tmp_path, data, data={"normalize": normalize, "val_size": 10})
    images, _ = read_h5(data, "train")
    kept = np.unique(np.concatenate([b.indices for b in rec.batches]))
    # normalize: (x / 255 - mean) / std with the statistics of the samples trained on (the
    # hold-out excluded); off: x / 255.
    mean, std = stats(images[kept]) if normalize else (0.0, 1.0)
    if normalize:
        assert np.abs(mean - stats(images)[0]).max() > 1e-3  # the hold-out would change them
    for b in rec.batches:
        np.testing.assert_allclose(b.x, (b.raw / 255.0 - mean) / std, rtol=1e-5, atol=1e-6)
    snap = load_checkpoint(rd / "checkpoints" / "last.h5")
    if normalize:
        np.testing.assert_allclose(snap.normalization, (mean, std), rtol=1e-6)
    else:
        assert snap.normalization is None
    # The test split is scored the same way, with the final weights.
    test_images, test_labels = read_h5(data, "test")
    w, b = dense_wb(result.model, result.model.params)
    want = softmax_reference((test_images / 255.0 - mean) / std, test_labels, w, b)[0]
    assert metrics(rd)[-1]["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("val_size,validate_on,held_n", [
    (7, "holdout", 7), (0, "holdout", 4), (0, "test", 0)])  # 0: 10 % held out by default
def test_val_size_holds_out_exactly_n_samples_never_trained_on(tmp_path, rec, capfd, val_size,
                                                                validate_on, held_n):
    data = toy_h5(tmp_path, n_train=40)
    result, rd = run(tmp_path, data, data={"normalize": False, "val_size": val_size,
                                           "validate_on": validate_on},
                     train={"epochs": 2})
    warned = "warning: data.validate_on: test: early stopping" in capfd.readouterr().err
    assert warned == (validate_on == "test")
    trained = [np.sort(np.concatenate([b.indices for b in rec.batches if b.epoch == e]))
               for e in (0, 1)]
    assert np.array_equal(trained[0], trained[1])  # the same samples each epoch, each once
    held = np.setdiff1d(np.arange(40), trained[0])
    assert len(trained[0]) == 40 - held_n and len(held) == held_n
    # Validation scores exactly the held-out samples (the test split only if asked), after
    # each epoch.
    if held_n:
        images, labels = read_h5(data, "train")
        images, labels = images[held], labels[held]
    else:
        images, labels = read_h5(data, "test")
    vals = [m for m in metrics(rd) if m["split"] == "val"]
    assert [m["n"] for m in vals] == [len(labels)] * 2
    ends = [rec.steps[2].after, rec.steps[5].after]  # 3 steps per epoch (33 to 40 samples)
    for line, params in zip(vals, ends, strict=True):
        w, b = dense_wb(result.model, params)
        assert line["loss"] == pytest.approx(
            softmax_reference(images / 255.0, labels, w, b)[0], rel=1e-5)


# -- prefetch ------------------------------------------------------------------------------------
def test_prefetch_changes_the_thread_not_the_batches(tmp_path, monkeypatch):
    data = toy_h5(tmp_path, n_train=40)
    seen = {}
    for prefetch in (True, False):
        rec = Recorder(monkeypatch)
        result, _ = run(tmp_path, data, f"p{prefetch}", data={"prefetch": prefetch,
                                                              "augment": True})
        seen[prefetch] = (rec.batches, result.model.params.copy())
        monkeypatch.undo()
    (on, p_on), (off, p_off) = seen[True], seen[False]
    assert {b.thread for b in on} == {"distnn-prefetch"} and {b.thread for b in off} == {
        "MainThread"}
    assert len(on) == len(off) == 6
    for a, b in zip(on, off, strict=True):
        assert a.epoch == b.epoch and np.array_equal(a.indices, b.indices)
        assert np.array_equal(a.x, b.x)
    assert np.array_equal(p_on, p_off)


# -- data source ---------------------------------------------------------------------------------
def test_dataset_names_the_file_trained_on(tmp_path, rec):
    other = toy_h5(tmp_path, n_train=24, seed=9)
    run(tmp_path, other, train={"epochs": 1}, data={"normalize": False})
    images, _ = read_h5(other, "train")
    assert sum(len(b.indices) for b in rec.batches) == 24
    for b in rec.batches:
        np.testing.assert_allclose(b.x, images[b.indices] / 255.0, rtol=1e-6, atol=0)


@needs_shared
def test_data_dir_is_where_a_named_dataset_is_read(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("DISTNN_DATA_DIR", str(empty))
    monkeypatch.setenv("DISTNN_OFFLINE", "1")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "mnist").symlink_to(SHARED_DATA / "mnist")
    splits = load_splits(from_dict({"data": {"dataset": "mnist", "data_dir": str(mine)}}))
    assert (len(splits.train), len(splits.test)) == (54000, 10000)  # 10 % held out
    # Not given: $DISTNN_DATA_DIR, here an empty folder.
    with pytest.raises(DataError, match=re.escape(str(empty))):
        load_splits(from_dict({"data": {"dataset": "mnist"}}))


# -- compute_normalization (data/transforms.py) on its own -----------------------------------------
def pixels(n: int, seed: int = 4) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 3, 2, 2)).astype(np.uint8)
    return ArrayDataset(images, np.zeros(n, np.int64), ("a",), "pix", "train")


@pytest.mark.parametrize("max_samples, picked", [(None, range(7)), (7, range(7)), (3, [0, 3, 6]),
                                                 (2, [0, 6]), (1, [0])])
def test_normalization_statistics_of_the_evenly_spaced_samples(max_samples, picked):
    from distnn.data.transforms import compute_normalization
    ds = pixels(7)
    mean, std = compute_normalization(ds, max_samples=max_samples, block=2)
    want_mean, want_std = stats(ds.images[list(picked)])  # float64, written out above
    assert mean.dtype == np.float32 and std.dtype == np.float32
    np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
    np.testing.assert_allclose(std, want_std, rtol=1e-5)


def test_normalization_refuses_an_empty_split_and_fewer_than_one_sample():
    from distnn.data.transforms import compute_normalization
    empty = ArrayDataset(np.zeros((0, 2, 2, 1), np.uint8), np.zeros(0, np.int64), ("a",),
                         "pix", "train")
    with pytest.raises(ValueError) as err:
        compute_normalization(empty)
    assert str(err.value) == "compute_normalization: pix is empty"
    for bad in (0, -2):
        with pytest.raises(ValueError) as err:
            compute_normalization(pixels(5), max_samples=bad)
        assert str(err.value) == f"max_samples must be >= 1, got {bad}"
