"""The harness of the config-effect tests (tests/test_config_effects.py, tests/optim/
test_update_formulas.py, tests/data/test_augment_values.py): a tiny HDF5 dataset, configs, an
in-process run on the local communicator, spies that record what each step saw (they only watch
and call through), and float64 references of the dense model's loss."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

import distnn.data.iterator as iterator
from distnn.comm import LocalCommunicator
from distnn.config import Config, from_dict
from distnn.data import ArrayDataset, write_h5
from distnn.exit_codes import ExitCode
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.nn.lockstep import Lockstep
from distnn.train.invariant import InvariantStep
from distnn.train.run import TrainResult, train
from distnn.train.step import DataParallelStep
from tests.train.tiny import validate_on_test_unless_held_out

DENSE = [{"type": "flatten"}, {"type": "dense", "units": 3}]
CONV = [{"type": "conv", "filters": 4, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 3}]


# -- harness ------------------------------------------------------------------------------------
def toy_images(rng, n: int, hw: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (n, hw, hw, 1) in 1..255 (no black pixel: zero padding shows) and a learnable
    label: which of the first three pixels is brightest."""
    images = rng.integers(1, 256, (n, hw, hw, 1), dtype=np.uint8)
    return images, images.reshape(n, -1)[:, :3].argmax(axis=1)


def toy_h5(folder: Path, n_train: int = 40, n_test: int = 24, hw: int = 4, seed: int = 0) -> Path:
    """A distnn HDF5 file with a train and a test split of toy_images."""
    rng = np.random.default_rng(seed)
    splits = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = toy_images(rng, n, hw)
        splits[split] = ArrayDataset(images, labels, ("a", "b", "c"), "toy", split)
    return write_h5(Path(folder) / f"toy-{n_train}-{n_test}-{hw}-{seed}.h5", splits, "toy", "")


def read_h5(path: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return np.array(fh[f"{split}/images"]), np.array(fh[f"{split}/labels"])


def make_config(file: Path, **sections) -> Config:
    """A validated Config on the toy file: sgd at a constant 0.1, no early stopping; keyword
    sections update these (a dict per section, or a top-level value)."""
    raw: dict = {"name": "effects", "seed": 3, "model": DENSE,
                 "data": {"dataset": str(file)},
                 "train": {"epochs": 2, "global_batch": 16},
                 "optimizer": {"name": "sgd"},
                 "schedule": {"name": "constant", "base_lr": 0.1},
                 "early_stopping": {"enabled": False}}
    for key, value in sections.items():
        if isinstance(value, dict):
            raw.setdefault(key, {}).update(value)
        else:
            raw[key] = value
    validate_on_test_unless_held_out(raw["data"])
    return from_dict(raw)


def run(tmp_path: Path, file: Path, tag: str = "run", **sections) -> tuple[TrainResult, Path]:
    result = train(make_config(file, **sections), LocalCommunicator(), tmp_path / tag)
    assert result.exit_code == ExitCode.OK
    return result, tmp_path / tag


@dataclass
class Step:
    x: np.ndarray
    y: np.ndarray
    count: int  # the global batch size the step divided by
    loss: float  # the reduced loss of the step, as the trainer saw it
    before: np.ndarray  # the flat parameters the step's forward pass used
    lr: float | None = None
    grads: np.ndarray | None = None  # the gradient handed to the update rule
    after: np.ndarray | None = None


@dataclass
class Batch:
    epoch: int
    indices: np.ndarray  # indices into the file's train split (through any hold-out)
    raw: np.ndarray  # the stored uint8 images, un-augmented
    x: np.ndarray  # what the trainer got
    thread: str


class Recorder:
    """Watches a run: every step (DataParallelStep or InvariantStep), every prepared batch
    (prepare_batch) and every forward_backward or lockstep call (its batch size and the conv
    thread count in effect)."""

    def __init__(self, monkeypatch):
        self.steps: list[Step] = []
        self.batches: list[Batch] = []
        self.micro: list[tuple[int, int]] = []
        call, apply = DataParallelStep.__call__, DataParallelStep.apply_update
        invariant_call = InvariantStep.__call__
        prepare, fb = iterator.prepare_batch, Sequential.forward_backward

        def spy(inner):
            def spy_call(fn, x, y, count, lr, stop, apply=True, **kw):
                before = fn.model.params.copy()
                res = inner(fn, x, y, count, lr, stop, apply=apply, **kw)
                self.steps.append(Step(x.copy(), y.copy(), count, res.loss, before))
                return res
            return spy_call

        def spy_apply(fn, lr):
            step = self.steps[-1]
            step.lr, step.grads = lr, fn.model.grads.copy()
            apply(fn, lr)
            step.after = fn.model.params.copy()

        def spy_prepare(dataset, sampler, step, normalization=None, augment=None, epoch=None):
            x, y = prepare(dataset, sampler, step, normalization, augment, epoch)
            idx = sampler.local_indices(step)
            base = dataset.indices[idx] if hasattr(dataset, "indices") else idx
            self.batches.append(Batch(sampler.epoch, np.asarray(base), dataset.read(idx),
                                      x.copy(), threading.current_thread().name))
            return x, y

        def spy_fb(model, x, *args, **kwargs):
            self.micro.append((len(x), nn_threads.get_num_threads()))
            return fb(model, x, *args, **kwargs)

        monkeypatch.setattr(DataParallelStep, "__call__", spy(call))
        monkeypatch.setattr(InvariantStep, "__call__", spy(invariant_call))
        monkeypatch.setattr(DataParallelStep, "apply_update", spy_apply)
        monkeypatch.setattr(iterator, "prepare_batch", spy_prepare)
        lockstep_run = Lockstep.run

        def spy_lockstep(ls, groups, *args, **kwargs):
            self.micro.append((sum(len(g.y) for g in groups), nn_threads.get_num_threads()))
            return lockstep_run(ls, groups, *args, **kwargs)

        monkeypatch.setattr(Sequential, "forward_backward", spy_fb)
        monkeypatch.setattr(Lockstep, "run", spy_lockstep)

    def lrs(self) -> list[float]:
        return [s.lr for s in self.steps]


def dense_slots(model: Sequential) -> dict[str, tuple[slice, tuple[int, ...]]]:
    """Where the last dense layer's W (D, U) and b (U,) sit in the flat parameter vector,
    found from the addresses of the layer's views into model.params."""
    layer, out = model.layers[-1], {}
    for name in ("W", "b"):
        view = layer.p[name]
        off = (view.ctypes.data - model.params.ctypes.data) // model.params.itemsize
        out[name] = (slice(off, off + view.size), view.shape)
    return out


def dense_wb(model: Sequential, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """W and b inside a flat parameter-sized vector `flat`, as float64 copies."""
    slots = dense_slots(model)
    w, b = (flat[slots[k][0]].reshape(slots[k][1]).astype(np.float64) for k in ("W", "b"))
    return w, b


def softmax_reference(x, y, w, b):
    """Mean cross-entropy and its gradient (dW, db) of scores x @ w + b, in float64."""
    x = x.reshape(len(x), -1).astype(np.float64)
    s = x @ w + b
    s -= s.max(axis=1, keepdims=True)
    p = np.exp(s) / np.exp(s).sum(axis=1, keepdims=True)
    n = len(y)
    loss = -np.log(p[np.arange(n), y]).mean()
    ds = p.copy()
    ds[np.arange(n), y] -= 1
    ds /= n
    return loss, x.T @ ds, ds.sum(axis=0)


def hinge_reference(x, y, w, b):
    """Multiclass SVM: mean over samples of sum_{j != y} max(0, s_j - s_y + 1), and (dW, db)."""
    x = x.reshape(len(x), -1).astype(np.float64)
    s = x @ w + b
    n, k = s.shape
    loss, ds = 0.0, np.zeros_like(s)
    for i in range(n):
        for j in range(k):
            margin = s[i, j] - s[i, y[i]] + 1.0
            if j != y[i] and margin > 0:
                loss += margin
                ds[i, j] += 1.0
                ds[i, y[i]] -= 1.0
    return loss / n, x.T @ (ds / n), (ds / n).sum(axis=0)


def close(a, b, rtol=2e-5, atol=2e-7):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)


MOMENTUM = {"name": "momentum", "mu": 0.9}  # its validation curve turns: best epochs differ
