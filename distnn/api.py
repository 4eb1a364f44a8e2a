"""The public Python API: train from Python, load a checkpoint, predict.

    import distnn
    result = distnn.train("quickstart", overrides=["train.epochs=1"])
    model = distnn.load(result.checkpoint)
    probabilities = model.predict(images)        # (N, K), images (N, H, W, C) uint8 or float
    print(model.evaluate("mini_mnist"))          # {'accuracy', 'loss', 'n'} on the test split

`train` is the run `distnn train` makes (the same bits: same config, same run): one process, or
every rank of an `mpirun` job (each rank calls it). Bad input raises (ConfigError, DataError,
CheckpointError: ValueErrors whose message names the bad value); a run that stops on a signal or
diverges returns with its exit code (75, 3), as the command line would exit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from distnn.comm import Communicator, create_communicator, detect_backend
from distnn.config import (
    Config,
    ConfigError,
    apply_overrides,
    check_world_size,
    from_dict,
    load_config,
    with_absolute_paths,
)
from distnn.data import Dataset, Normalization, get_dataset, to_float
from distnn.data.preprocess import image_shape_of
from distnn.exit_codes import ExitCode
from distnn.launch.rundir import resolve_run
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.train import run as train_run
from distnn.train.checkpoint import Snapshot, load_checkpoint
from distnn.train.ensemble import softmax64
from distnn.train.errors import CheckpointError, TrainingDiverged
from distnn.train.evaluate import evaluate as evaluate_split
from distnn.train.evaluate_checkpoint import network_shape, saved_config, saved_network
from distnn.train.setup import rank_threads

__all__ = ["Model", "RunResult", "load", "train"]


@dataclass(frozen=True)
class RunResult:
    """What a run ended with: `exit_code` (distnn.exit_codes.ExitCode: 0 finished, 75 stopped
    by a signal and resumable, 3 diverged), its run directory, the test split's numbers
    ({'accuracy', 'loss', 'n'}; None unless finished) and its best checkpoint (None if none)."""

    exit_code: int
    run_dir: Path
    test: dict[str, float] | None
    checkpoint: Path | None

    @property
    def ok(self) -> bool:
        return self.exit_code == ExitCode.OK


def _config(config: str | Path | Config | dict[str, Any],
            overrides: Sequence[str]) -> Config:
    if isinstance(config, Config):
        if overrides:
            raise ConfigError("overrides apply to a config file, name or dict; expected none "
                              "with a Config")
        return config
    if isinstance(config, dict):
        return from_dict(apply_overrides(dict(config), list(overrides)))
    return load_config(str(config), list(overrides))


def train(config: str | Path | Config | dict[str, Any] = "quickstart",
          comm: Communicator | None = None, *, overrides: Sequence[str] = (),
          run_dir: str | Path | None = None, resume: str | None = None) -> RunResult:
    """Train as `distnn train CONFIG --set ... --run-dir ... --resume ...` does. `config`: a
    bundled name, a YAML path, a dict (the YAML's content) or a Config; `comm`: the
    communicator (default: MPI under mpirun, else this process alone). Collective: every rank
    must call. Raises on bad input (ConfigError, DataError, CheckpointError)."""
    cfg = with_absolute_paths(_config(config, overrides))
    comm = comm if comm is not None else create_communicator(detect_backend(),
                                                             timeout=cfg.comm.timeout or None)
    check_world_size(cfg, comm.size)
    where, start, held = resolve_run(None if run_dir is None else str(run_dir), resume, cfg,
                                     comm)
    try:
        result = train_run.train(cfg, comm, where, start)
        code, test = result.exit_code, result.test
    except TrainingDiverged:
        code, test = ExitCode.DIVERGED, None
    finally:
        if held is not None:
            held.release()
    folder = Path(where) / "checkpoints"
    best = next((p for p in (folder / "best.h5", folder / "last.h5") if p.exists()), None)
    return RunResult(int(code), Path(where), test, best)


class Model:
    """A trained network: its layers (`network`, a distnn.nn.Sequential), the normalisation of
    its inputs (per-channel (mean, std), a distnn.data.Preprocess for data.preprocess
    mean_image or pca_whiten, or None) and the names of its classes."""

    def __init__(self, network: Sequential, normalization: Normalization,
                 class_names: Sequence[str], loss: str = "softmax", pixels: bool = True) -> None:
        self.network, self.normalization = network, normalization
        self.class_names = tuple(str(c) for c in class_names)
        self.loss = loss
        self.pixels = pixels  # trained on images (floats in 0..1), not on a features file

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The per-sample input shape, (H, W, C): the images predict takes (with pca_whiten,
        not the network's (1, 1, k))."""
        return image_shape_of(self.normalization, self.network.input_shape)

    def _inputs(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.shape == self.input_shape:  # one image
            x = x[None]
        if x.ndim != len(self.input_shape) + 1 or x.shape[1:] != self.input_shape:
            raise ValueError(f"images of shape {x.shape}, expected (N, "
                             f"{', '.join(map(str, self.input_shape))}) (N images, NHWC) or "
                             f"one image {self.input_shape}")
        if x.dtype != np.uint8 and x.dtype.kind != "f":
            raise ValueError(f"images of dtype {x.dtype}, expected uint8 (0..255) or float "
                             f"(0..1)")
        if x.dtype.kind == "f" and x.size:
            if not np.isfinite(x).all():
                raise ValueError("images hold NaN or infinite values, expected finite floats")
            low, high = float(x.min()), float(x.max())
            if self.pixels and (low < 0 or high > 1):
                raise ValueError(f"float images range over {low:g}..{high:g}, expected 0..1 "
                                 f"(pixels / 255; or pass the uint8 pixels)")
        return x

    def predict(self, x: np.ndarray, batch_size: int = 256,
                threads: int | None = None) -> np.ndarray:
        """Class probabilities (N, K) float64 of images x: (N, H, W, C) (or one (H, W, C)),
        uint8 pixels (0..255) or floats already scaled to 0..1 (a model trained on a features
        file: its float codes as they are); the model's normalisation is applied. Evaluation
        mode, `batch_size` images at a time, on `threads` threads (default: every core). The
        same bits for any thread count; an image batched with other images may differ in the
        last bits (a GEMM's rounding depends on its shape). The softmax of the scores: for a
        model trained with train.loss: svm, a ranking rather than calibrated probabilities."""
        x = self._inputs(x)
        if batch_size < 1:
            raise ValueError(f"batch_size {batch_size}, expected >= 1")
        n = threads if threads is not None else rank_threads(0, 1)
        out = np.empty((len(x), int(np.prod(self.network.output_shape))), np.float64)
        with threadpool_limits(1), nn_threads.limit(n):
            for a in range(0, len(x), batch_size):
                batch = to_float(x[a:a + batch_size], self.normalization)
                scores = self.network.forward(batch.astype(self.network.dtype, copy=False),
                                              training=False)
                out[a:a + len(batch)] = softmax64(scores.reshape(len(batch), -1))
        return out

    def evaluate(self, dataset: str | Dataset, split: str = "test",
                 data_dir: str | None = None, comm: Communicator | None = None) -> dict:
        """{'accuracy', 'loss', 'n'} on a dataset (a name, a .h5 path or a Dataset) split, as
        `distnn evaluate` computes them (the same bits). Collective when `comm` has ranks."""
        data = get_dataset(dataset, split, data_dir) if isinstance(dataset, str) else dataset
        comm = comm if comm is not None else create_communicator("local")
        with threadpool_limits(1), nn_threads.limit(rank_threads(0, comm.size)):
            return evaluate_split(self.network, data, comm, self.normalization, self.loss)


def model_from(snap: Snapshot, path: Path, input_shape: Sequence[int] | None = None,
               data_dir: str | None = None) -> Model:
    """The Model of a checkpoint snapshot: its architecture for the input shape it records (or
    `input_shape`, or its dataset's), its parameters, normalisation and class names."""
    cfg = saved_config(snap, path)
    # The recorded shape is the network's; `input_shape` and a dataset's are images' shapes.
    shape, names = snap.inputs.get("input_shape"), snap.inputs.get("class_names")
    if input_shape is not None:
        shape = network_shape(path, snap, tuple(input_shape),
                              f"input_shape {tuple(input_shape)}")
    if shape is None or names is None:  # written before checkpoints recorded them
        data = get_dataset(cfg.data.dataset, "test", data_dir or cfg.data.data_dir,
                           download=False)
        if shape is None:
            shape = network_shape(path, snap, data.image_shape, f"{data.name} images")
        names = names if names is not None else data.class_names
    network = saved_network(path, snap, cfg, tuple(shape))
    outputs = int(np.prod(network.output_shape))
    if len(names) != outputs:
        raise CheckpointError(f"{path}: {len(names)} class names for the model's {outputs} "
                              f"outputs, expected one name per output")
    return Model(network, snap.normalization, names, cfg.train.loss,
                 snap.inputs.get("pixels", True))


def load(path: str | Path, input_shape: Sequence[int] | None = None,
         data_dir: str | None = None) -> Model:
    """The trained model in a distnn checkpoint (`best.h5`, `last.h5`, ...). A file that is
    not a distnn checkpoint, or fails its checks, raises CheckpointError naming it. Checkpoints
    written before distnn recorded input shapes and class names take them from `input_shape`
    and their dataset's files (never downloaded: a DataError when they are not there)."""
    path = Path(path)
    return model_from(load_checkpoint(path), path, input_shape, data_dir)
