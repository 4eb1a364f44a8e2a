"""Build the pieces of a run from a Config: datasets, normalisation, model, optimizer, schedule."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from distnn.config import Config, ConfigError, frozen_names, model_errors, schedule_spec
from distnn.data import Dataset, get_dataset
from distnn.nn import Sequential
from distnn.optim import (
    LinearWarmup,
    ScaledLR,
    Schedule,
    UpdateRule,
    make_optimizer,
    make_schedule,
)
from distnn.train.step import EXTRA_SLOTS

ScheduleLike = Schedule | LinearWarmup


@dataclass
class Splits:
    train: Dataset
    val: Dataset
    test: Dataset


class Subset(Dataset):
    """A fixed subset of a dataset (e.g. validation held out of the training split); `split`
    names the part it plays ("train", "val")."""

    def __init__(self, base: Dataset, indices: np.ndarray, split: str):
        self.base, self.indices = base, np.asarray(indices)
        self.name, self.split, self.provenance = base.name, split, base.provenance
        self.labels = base.labels[self.indices]
        self.image_shape, self.num_classes = base.image_shape, base.num_classes
        self.class_names = base.class_names

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, idx: np.ndarray) -> np.ndarray:
        return self.base.read(self.indices[idx])


def load_splits(cfg: Config) -> Splits:
    """train/val/test. With data.folds >= 2, validation is fold data.fold of the training split
    and the other folds are trained on (fold_indices); otherwise validation is a seeded hold-out
    of data.val_size training samples (0: held_out_size, 10 %). Either is the same on every
    rank. Only data.validate_on: test validates on the test split (the whole training split
    trained on; Coordinator warns)."""
    d = cfg.data
    train = labelled_subset(get_dataset(d.dataset, "train", d.data_dir), d.train_size, cfg.seed)
    test = get_dataset(d.dataset, "test", d.data_dir)
    if d.validate_on == "test":
        return Splits(train, test, test)
    if d.folds >= 2:
        if d.folds > len(train):
            raise ConfigError(f"data.folds: {d.folds} folds of the {len(train)} training "
                              f"samples, expected at most {len(train)} (each fold at least one "
                              f"sample)")
        kept, held = fold_indices(len(train), d.folds, d.fold, cfg.seed)
        return Splits(Subset(train, kept, "train"), Subset(train, held, "val"), test)
    size = d.val_size or held_out_size(len(train))
    if size >= len(train):
        raise ConfigError(f"data.val_size: {size} must be < the {len(train)} training "
                          f"samples" + ("" if d.val_size else " (10 % held out for validation; "
                                        "data.validate_on: test validates on the test split)"))
    order = holdout_order(len(train), cfg.seed)
    held, kept = np.sort(order[:size]), np.sort(order[size:])
    return Splits(Subset(train, kept, "train"), Subset(train, held, "val"), test)


def held_out_size(n: int) -> int:
    """The validation samples held out of `n` training samples by default: 10 %, at least 1."""
    return max(1, n // 10)


def labelled_subset(train: Dataset, size: int, seed: int) -> Dataset:
    """`size` samples of the training split, a seeded choice (labelled_indices; the whole
    split for 0)."""
    if size <= 0:
        return train
    if size > len(train):
        raise ConfigError(f"data.train_size: {size}, expected at most the {len(train)} samples "
                          f"of the training split")
    return Subset(train, labelled_indices(len(train), size, seed), "train")


def labelled_indices(n: int, size: int, seed: int) -> np.ndarray:
    """(size,) sorted int64: the seeded choice of `size` of `n` training samples that
    data.train_size and `distnn knn --train-size` take."""
    return np.sort(np.random.default_rng([seed, 11]).permutation(n)[:size])


def holdout_order(n: int, seed: int) -> np.ndarray:
    """(n,) int64: the seeded permutation of the training split that val_size and folds cut."""
    return np.random.default_rng([seed, 7]).permutation(n)


def fold_indices(n: int, folds: int, fold: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) sorted int64 indices into a training split of `n` samples: the seeded
    permutation (holdout_order) cut by np.array_split into `folds` parts (sizes differ by at
    most 1); part `fold` is validation, the rest is trained on. 2 <= folds <= n, fold < folds."""
    parts = np.array_split(holdout_order(n, seed), folds)
    held = np.sort(parts[fold])
    kept = np.sort(np.concatenate([p for i, p in enumerate(parts) if i != fold]))
    return kept, held


def build_model(cfg: Config, image_shape: tuple[int, ...], num_classes: int) -> Sequential:
    """The configured model on images of `image_shape`, one score per class; a spec that does
    not fit them is a ConfigError naming the `model:` layer."""
    with model_errors(f" (on images of shape {tuple(image_shape)})"):
        model = Sequential(list(cfg.model), tuple(image_shape), seed=cfg.seed, dtype=np.float32,
                           extra_grad_slots=EXTRA_SLOTS)
    frozen = frozen_names(cfg)
    if frozen:
        model.freeze(frozen)  # names checked when the config loaded
    if model.output_shape != (num_classes,):
        raise ConfigError(f"model: the last layer outputs {model.output_shape} per image, "
                          f"expected ({num_classes},): one score for each of the dataset's "
                          f"{num_classes} classes (end with flatten and dense units: "
                          f"{num_classes})")
    return model


def build_optimizer(cfg: Config, model: Sequential) -> UpdateRule:
    """The configured update rule over the trained parameters, params[model.train_offset:]
    (all of them unless a frozen prefix comes first); the model's decay mask goes to rules that
    decay weights. optimizer.lr_mult, or a frozen layer after a trained one, wraps the rule in
    ScaledLR (a learning-rate multiplier per entry, 0 for frozen ones)."""
    off = model.train_offset
    rule = make_optimizer(cfg.optimizer.name, decay_mask=model.decay_mask[off:],
                          **cfg.optimizer.params)
    scale = model.lr_scale(dict(cfg.optimizer.lr_mult))
    return rule if scale is None else ScaledLR(rule, scale)


def build_schedule(cfg: Config) -> ScheduleLike:
    """The configured schedule, with what it takes from other sections (see schedule_spec)."""
    return make_schedule(schedule_spec(cfg))


def rank_threads(cfg_threads: int, world_size: int) -> int:
    """Threads per rank for the layers (distnn.nn.threads): `train.threads`, or cores / ranks
    so that ranks never oversubscribe the cores (2 ranks x 2 threads thrash)."""
    if cfg_threads > 0:
        return cfg_threads
    return max(1, (os.cpu_count() or 1) // max(world_size, 1))
