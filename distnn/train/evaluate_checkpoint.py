"""Evaluate a saved checkpoint: the model spec, config and normalisation come from the file."""

from __future__ import annotations

from pathlib import Path

from distnn.config import ConfigError, from_dict, parse_yaml
from distnn.data import get_dataset
from distnn.nn import StateError
from distnn.nn import threads as nn_threads
from distnn.train.errors import CheckpointError
from distnn.train.evaluate import evaluate
from distnn.train.run import load_on_root
from distnn.train.setup import build_model, rank_threads
from distnn.train.step import parameter_checksum


def evaluate_checkpoint(path: Path, comm, dataset: str | None, split: str,
                        data_dir: str | None) -> dict:
    """Collective: all ranks must call. Returns {'accuracy', 'loss', 'n', 'dataset', 'split',
    'params_crc'} (the CRC-32 of the parameters, as on the run's epoch lines).
    A checkpoint whose saved config or arrays do not fit the dataset is a CheckpointError; the
    dataset's own errors are DataErrors (both name the file)."""
    snap = load_on_root(path, None, comm)
    assert snap is not None  # a path was given: a snapshot or a CheckpointError
    try:
        cfg = from_dict(parse_yaml(snap.config_yaml, "its config") or {})
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    name = dataset or cfg.data.dataset
    data = get_dataset(name, split, data_dir or cfg.data.data_dir)
    try:
        model = build_model(cfg, data.image_shape, data.num_classes)
        model.load_state_dict(snap.model)
    except (ConfigError, StateError) as exc:
        raise CheckpointError(f"{path}: its model does not fit {name} [{split}]: {exc}") from None
    # Under the thread limits of training (one-thread BLAS): the numbers of the run's test line.
    with nn_threads.limit(rank_threads(cfg.train.threads, comm.size)):
        result = evaluate(model, data, comm, snap.normalization, cfg.train.loss)
    return {**result, "dataset": name, "split": split,
            "params_crc": parameter_checksum(model.params)}
