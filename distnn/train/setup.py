"""Build the pieces of a run from a Config: datasets, normalisation, model, optimizer, schedule."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from distnn.config import Config
from distnn.nn import Sequential
from distnn.train.step import EXTRA_SLOTS


@dataclass
class Splits:
    train: object
    val: object
    test: object


class Subset:
    """A fixed subset of a dataset (e.g. validation held out of the training split)."""

    def __init__(self, base, indices: np.ndarray, name: str):
        self.base, self.indices, self.name = base, np.asarray(indices), name
        self.labels = base.labels[self.indices]
        self.image_shape, self.num_classes = base.image_shape, base.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def read(self, idx: np.ndarray) -> np.ndarray:
        return self.base.read(self.indices[idx])


def load_splits(cfg: Config) -> Splits:
    """train/val/test. With data.val_size > 0, validation is a seeded hold-out of the training
    split (the same on every rank); otherwise the test split doubles as validation.
    """
    from distnn.data import get_dataset

    d = cfg.data
    train = get_dataset(d.dataset, "train", d.data_dir)
    test = get_dataset(d.dataset, "test", d.data_dir)
    if d.val_size <= 0:
        return Splits(train, test, test)
    if d.val_size >= len(train):
        from distnn.config import ConfigError

        raise ConfigError(f"data.val_size: {d.val_size} must be < the {len(train)} training samples")
    order = np.random.default_rng([cfg.seed, 7]).permutation(len(train))
    held, kept = np.sort(order[: d.val_size]), np.sort(order[d.val_size:])
    return Splits(Subset(train, kept, "train"), Subset(train, held, "val"), test)


def build_model(cfg: Config, image_shape) -> Sequential:
    return Sequential(list(cfg.model), tuple(image_shape), seed=cfg.seed, dtype=np.float32,
                      extra_grad_slots=EXTRA_SLOTS)


def build_optimizer(cfg: Config, model):
    from distnn.optim import make_optimizer

    o = cfg.optimizer
    hparams = {
        "sgd": {},
        "momentum": {"mu": o.mu},
        "nesterov": {"mu": o.mu},
        "adagrad": {"eps": o.eps},
        "rmsprop": {"decay_rate": o.decay_rate, "eps": o.eps},
        "adam": {"beta1": o.beta1, "beta2": o.beta2, "eps": o.eps},
        "adamw": {"beta1": o.beta1, "beta2": o.beta2, "eps": o.eps, "wd": o.weight_decay,
                  "decay_mask": model.decay_mask},
    }[o.name]
    return make_optimizer(o.name, **hparams)


def build_schedule(cfg: Config):
    from distnn.optim import make_schedule, scaled_lr

    s = cfg.schedule
    base = s.base_lr
    if s.scale_lr:
        base = scaled_lr(base, cfg.train.global_batch, s.reference_batch)
    spec = {"name": s.name, "base_lr": base}
    extra = {
        "step": {"drop": s.drop, "every": s.every},
        "exponential": {"gamma": s.gamma},
        "inverse_time": {"k": s.k},
        "cosine": {"total_epochs": s.total_epochs or cfg.train.epochs, "min_lr": s.min_lr},
        "plateau": {"factor": s.factor, "patience": s.patience, "cooldown": s.cooldown,
                    "min_lr": s.min_lr, "mode": cfg.early_stopping.mode},
    }.get(s.name, {})
    spec.update(extra)
    if s.warmup_epochs > 0:
        spec.update(warmup_epochs=s.warmup_epochs, warmup_start_factor=s.warmup_start_factor)
    return make_schedule(spec)


def rank_threads(cfg_threads: int, world_size: int) -> int:
    """Threads per rank for the layers (distnn.nn.threads): `train.threads`, or cores / ranks
    so that ranks never oversubscribe the cores (2 ranks x 2 threads thrash)."""
    if cfg_threads > 0:
        return cfg_threads
    return max(1, (os.cpu_count() or 1) // max(world_size, 1))
