"""Tiny in-process training runs for the guard, bookkeeping and cadence tests.

A synthetic dataset of 2x2 grey images in 3 classes (a distnn HDF5 file), a model of one dense
layer, the local communicator, and `train()` called in this process: a run takes ~0.1 s. The
float64 reference of that model (scores = x @ W + b, softmax cross-entropy, its gradient) is
written out here with NumPy alone, so expectations never come from distnn.nn.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from distnn.comm import create_communicator
from distnn.comm.local import LocalCommunicator
from distnn.config import Config, from_dict
from distnn.data import ArrayDataset, write_h5
from distnn.train.run import TrainResult, train
from tests.train.runs import metrics

SHAPE = (2, 2, 1)
CLASSES = 3
DENSE = [{"type": "flatten"}, {"type": "dense", "units": CLASSES}]
# Two dense layers without an activation: the scores are a product of two weight matrices, so a
# huge first update makes the next step's scores overflow float32 (inf, then NaN in the loss).
DEEP = [{"type": "flatten"}, {"type": "dense", "units": 4}, {"type": "dense", "units": CLASSES}]
SEED = 3


@dataclass
class Data:
    path: Path
    x_train: np.ndarray  # float64 (n, 4): the images / 255, flattened in NHWC order
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def _images(rng, labels, signal: bool) -> np.ndarray:
    """uint8 (n, 2, 2, 1): noise, plus (with signal) a bright pixel at the label's position."""
    x = rng.integers(0, 90, (len(labels),) + SHAPE).astype(np.uint8)
    if signal:
        for i, c in enumerate(labels):
            x[i].flat[c] += 150
    return x


def make_data(folder: Path, n_train: int, n_test: int, seed: int = 0, signal: bool = True,
              same: bool = False, test_like_train: bool = False,
              test_signal: bool | None = None) -> Data:
    """Write <folder>/tiny.h5 (splits train and test). signal: the label shows in the image
    (test_signal: the same for the test split, default as signal). same: every training sample
    is a copy of the first (so any batch's mean gradient is that sample's gradient: order-free).
    test_like_train: the test split is the first n_test training samples."""
    rng = np.random.default_rng(seed)
    y_train = rng.integers(0, CLASSES, n_train)
    x_train = _images(rng, y_train, signal)
    if same:
        x_train[:], y_train[:] = x_train[0], y_train[0]
    y_test = rng.integers(0, CLASSES, n_test)
    x_test = _images(rng, y_test, signal if test_signal is None else test_signal)
    if test_like_train:
        x_test, y_test = x_train[:n_test].copy(), y_train[:n_test].copy()
    names = tuple(f"c{i}" for i in range(CLASSES))
    path = write_h5(Path(folder) / "tiny.h5",
                    {"train": ArrayDataset(x_train, y_train, names, "tiny", "train"),
                     "test": ArrayDataset(x_test, y_test, names, "tiny", "test")},
                    "tiny", "synthetic (tests/train/tiny.py)")

    def flat(x):
        return x.reshape(len(x), -1).astype(np.float64) / 255.0

    return Data(path, flat(x_train), y_train.astype(np.int64), flat(x_test),
                y_test.astype(np.int64))


def config(data: Data, model=None, **sections) -> Config:
    """A validated Config on `data`; keyword sections update the defaults key by key."""
    raw = {
        "name": "tiny", "seed": SEED, "model": copy.deepcopy(model or DENSE),
        "data": {"dataset": str(data.path), "normalize": False, "prefetch": False},
        "train": {"epochs": 1, "global_batch": 4, "threads": 1, "consistency_every": 0},
        "optimizer": {"name": "sgd"},
        "schedule": {"name": "constant", "base_lr": 0.1},
        "early_stopping": {"enabled": False},
        "checkpoint": {"keep_last": 1000},
    }
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    validate_on_test_unless_held_out(raw["data"])
    return from_dict(raw)


def validate_on_test_unless_held_out(data: dict) -> None:
    """These runs score the toy test split as their validation set and train on every training
    sample (data.validate_on: test), unless a test holds samples out itself (val_size, folds)
    or names validate_on."""
    if not (data.get("val_size") or data.get("folds") or "validate_on" in data):
        data["validate_on"] = "test"


def run(cfg: Config, run_dir: Path, comm: LocalCommunicator | None = None) -> TrainResult:
    return train(cfg, comm or create_communicator("local"), Path(run_dir))


def lines(run_dir: Path, split: str | None = None) -> list[dict]:
    return [m for m in metrics(run_dir) if split is None or m["split"] == split]


def step_files(run_dir: Path) -> dict[int, Path]:
    """{step: path} of checkpoints/step-<n>.h5, read from the file names."""
    return {int(p.stem.split("-")[1]): p
            for p in (Path(run_dir) / "checkpoints").glob("step-*.h5")}


def weights(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(W (4, 3), b (3,)) float64 of the one-dense-layer model in a checkpoint."""
    with h5py.File(path, "r") as fh:
        model = fh["model"]
        w = next(k for k in model if k.endswith(".W"))
        b = next(k for k in model if k.endswith(".b"))
        return np.array(model[w], np.float64), np.array(model[b], np.float64)


def coordinator(path: Path) -> dict:
    """The RunState stored in a checkpoint (read with distnn's reader: not under test here)."""
    from distnn.train.checkpoint import load_checkpoint
    return load_checkpoint(path).coordinator


def initial_weights(cfg: Config) -> tuple[np.ndarray, np.ndarray]:
    """The weights a run of `cfg` starts from (the model's seeded init: an input, not a result)."""
    from distnn.nn import Sequential
    model = Sequential(list(cfg.model), SHAPE, seed=cfg.seed)
    state = model.state_dict()
    w = next(v for k, v in state.items() if k.endswith(".W"))
    b = next(v for k, v in state.items() if k.endswith(".b"))
    return w.astype(np.float64), b.astype(np.float64)


# -- the sampler's documented order (data/sampler.py), written out ---------------------------------
SAMPLER_STREAM = 0x5348  # the sampler's random stream


def batches(n: int, batch: int, epoch: int, seed: int = SEED) -> list[np.ndarray]:
    """The epoch's global batches: consecutive slices of the (seed, epoch) permutation."""
    perm = np.random.default_rng([SAMPLER_STREAM, seed, epoch]).permutation(n)
    return [perm[i:i + batch] for i in range(0, n, batch)]


# -- the float64 reference --------------------------------------------------------------------
def log_softmax(scores: np.ndarray) -> np.ndarray:
    top = scores.max(axis=1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(axis=1, keepdims=True))


def losses(w, b, x, y) -> np.ndarray:
    """Per-sample softmax cross-entropy of scores x @ w + b."""
    return -log_softmax(x @ w + b)[np.arange(len(y)), y]


def correct(w, b, x, y) -> np.ndarray:
    return (x @ w + b).argmax(axis=1) == y


def gradient(w, b, x, y) -> tuple[np.ndarray, np.ndarray]:
    """d(mean loss)/d(w, b)."""
    p = np.exp(log_softmax(x @ w + b))
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    return x.T @ p, p.sum(axis=0)


def applied_lr(before, after, grad) -> float:
    """The learning rate of an SGD step before -> after along `grad` (least squares)."""
    delta = np.concatenate([(b0 - a0).ravel() for b0, a0 in zip(before, after, strict=True)])
    g = np.concatenate([g0.ravel() for g0 in grad])
    return float(delta @ g / (g @ g))
