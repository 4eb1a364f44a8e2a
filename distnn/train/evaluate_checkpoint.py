"""Evaluate a saved checkpoint: the model spec, config and normalisation come from the file."""

from __future__ import annotations

from pathlib import Path

import yaml

from distnn.config import from_dict
from distnn.data import get_dataset
from distnn.train.evaluate import evaluate
from distnn.train.run import load_on_root
from distnn.train.setup import build_model


def evaluate_checkpoint(path: Path, comm, dataset: str | None, split: str,
                        data_dir: str | None) -> dict:
    """Collective: all ranks must call. Returns {'accuracy', 'loss', 'n', 'dataset', 'split'}."""
    snap = load_on_root(path, None, comm)
    assert snap is not None  # a path was given: a snapshot or a CheckpointError
    cfg = from_dict(yaml.safe_load(snap.config_yaml))
    name = dataset or cfg.data.dataset
    data = get_dataset(name, split, data_dir or cfg.data.data_dir)
    model = build_model(cfg, data.image_shape)
    model.load_state_dict(snap.model)
    result = evaluate(model, data, comm, snap.normalization, cfg.train.loss)
    return {**result, "dataset": name, "split": split}

