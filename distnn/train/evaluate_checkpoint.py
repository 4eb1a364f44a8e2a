"""Evaluate a saved checkpoint: the model spec, config and normalisation come from the file.

read_saved and fit_model are the loader that `distnn evaluate` and ensembles (ensemble.py)
share: read the file (rank 0, broadcast), then build its model for a dataset and load it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from distnn.config import Config, ConfigError, from_dict, parse_yaml
from distnn.data import Dataset, get_dataset
from distnn.data.preprocess import model_shape
from distnn.nn import Sequential, SpecError, StateError
from distnn.nn import threads as nn_threads
from distnn.train.checkpoint import Snapshot
from distnn.train.errors import CheckpointError
from distnn.train.evaluate import evaluate
from distnn.train.run import load_on_root
from distnn.train.setup import build_model, rank_threads
from distnn.train.step import parameter_checksum


def read_saved(path: Path | str, comm) -> tuple[Snapshot, Config]:
    """The checkpoint at `path` (a file, or a URL as a str: downloaded to a temporary file on
    rank 0; storage/remote.py) read on rank 0 and broadcast, and the config saved in it.
    An unreadable file or config is a CheckpointError naming the file.
    Collective: all ranks must call."""
    snap = load_on_root(path, None, comm)
    assert snap is not None  # a path was given: a snapshot or a CheckpointError
    return snap, saved_config(snap, path)


def saved_config(snap: Snapshot, path: Path | str) -> Config:
    """The config saved in the checkpoint `snap` read from `path` (CheckpointError naming the
    file if it does not load)."""
    try:
        return from_dict(parse_yaml(snap.config_yaml, "its config") or {})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def saved_network(path: Path, snap: Snapshot, cfg: Config, input_shape: tuple[int, ...],
                  inputs: str | None = None) -> Sequential:
    """The checkpoint's layers (`cfg.model`, float32) for per-sample `input_shape`, with its
    parameters: what evaluation-only users (predict, features, export) run. A model that does
    not fit is a CheckpointError naming the file and `inputs` (default: the shape)."""
    try:
        network = Sequential(list(cfg.model), tuple(input_shape), seed=cfg.seed,
                             dtype=np.float32)
        network.load_state_dict(snap.model)
    except (SpecError, StateError) as exc:
        raise CheckpointError(f"{path}: its model does not fit "
                              f"{inputs or f'inputs {tuple(input_shape)}'}: {exc}") from None
    return network


def network_shape(path: Path | str, snap: Snapshot, image_shape: tuple[int, ...],
                  what: str) -> tuple[int, ...]:
    """The per-sample shape the saved network takes for images of `image_shape` under the
    saved normalisation (pca_whiten: (1, 1, k)). Images of another shape than a mean_image or
    pca_whiten was fitted on are a CheckpointError naming the file and `what`."""
    try:
        return model_shape(snap.normalization, tuple(image_shape))
    except ValueError as exc:
        raise CheckpointError(f"{path}: its normalisation does not fit {what}: {exc}") from None


def fit_model(path: Path | str, snap: Snapshot, cfg: Config, data: Dataset, name: str,
              split: str) -> Sequential:
    """The saved model built for `data`'s images and classes, with the saved parameters. A
    model that does not fit them (image shape, number of classes, array shapes) is a
    CheckpointError naming the file and `name` [`split`]."""
    shape = network_shape(path, snap, data.image_shape, f"{name} [{split}]")
    try:
        model = build_model(cfg, shape, data.num_classes)
        model.load_state_dict(snap.model)
    except (ConfigError, StateError) as exc:
        raise CheckpointError(f"{path}: its model does not fit {name} [{split}]: {exc}") from None
    return model


def evaluate_checkpoint(path: Path | str, comm, dataset: str | None, split: str,
                        data_dir: str | None) -> dict:
    """Collective: all ranks must call. Returns {'accuracy', 'loss', 'n', 'dataset', 'split',
    'params_crc'} (the CRC-32 of the parameters, as on the run's epoch lines).
    A checkpoint whose saved config or arrays do not fit the dataset is a CheckpointError; the
    dataset's own errors are DataErrors (both name the file)."""
    snap, cfg = read_saved(path, comm)
    name = dataset or cfg.data.dataset
    data = get_dataset(name, split, data_dir or cfg.data.data_dir)
    model = fit_model(path, snap, cfg, data, name, split)
    # Under the thread limits of training (one-thread BLAS): the numbers of the run's test line.
    with nn_threads.limit(rank_threads(cfg.train.threads, comm.size)):
        result = evaluate(model, data, comm, snap.normalization, cfg.train.loss)
    return {**result, "dataset": name, "split": split,
            "params_crc": parameter_checksum(model.params)}
