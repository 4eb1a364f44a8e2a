"""The config schema: frozen dataclasses per section, and the checks of their keys.

Every key is checked where it enters: unknown keys, wrong types and out-of-range values raise
ConfigError naming the dotted key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from distnn import optim


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mini_mnist"
    data_dir: str | None = None
    # Samples held out of the training split for validation (0: 10 % of it, at least 1;
    # setup.load_splits). The test split is scored once, at the end, and never picks anything
    # unless validate_on: test says so (a warning line).
    val_size: int = 0
    validate_on: str = "holdout"  # holdout | test (validation on the test split: warned)
    # Cross-validation: folds >= 2 cuts the training split into that many seeded folds; fold
    # `fold` is the validation set, the others are trained on (0: off; not with val_size).
    folds: int = 0
    fold: int = 0
    # A seeded subset of this many samples of the training split (0: all), taken before
    # val_size or folds cut it: "1,000 labelled samples" (setup.labelled_subset).
    train_size: int = 0
    augment: bool = False  # random crop (pad 4) + horizontal flip; off for digits
    normalize: bool = True
    # What normalize does, with statistics of the training split only (distnn/data/preprocess):
    # channel_mean_std (per channel) | mean_image (subtract the average image) | pca_whiten (the
    # centred data in the covariance eigenbasis, each component / sqrt(eigenvalue + whiten_eps);
    # pca_components: how many are kept, 0: all).
    preprocess: str = "channel_mean_std"
    pca_components: int = 0
    whiten_eps: float = 1e-5
    prefetch: bool = True


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    global_batch: int = 64
    grad_accum: int = 1
    loss: str = "softmax"
    l2: float = 0.0
    l1: float = 0.0  # l1 * sum|w| over the weights, like l2; both together: the elastic net
    max_steps: int = 0  # stop after this many steps in total (0: no limit)
    eval_every_steps: int = 0  # validate every n steps as well as every epoch (0: epochs only)
    consistency_every: int = 200  # compare a parameter checksum across ranks every n steps
    divergence_factor: float = 3.0  # stop when the loss exceeds this times the initial loss
    on_divergence: str = "stop"  # stop (exit 3) | rollback: newest good checkpoint, lower lr
    rollback_lr_factor: float = 0.5  # rollback multiplies the learning rate by this, in (0, 1)
    max_rollbacks: int = 3  # rollbacks allowed in a run; one more divergence stops (exit 3)
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this (0: off)
    threads: int = 0  # threads per rank for the layers (0: cores / ranks, at least 1)
    # true: the same parameters, to the bit, on any number of ranks (distnn/train/invariant.py),
    # 20-35 % slower on the cifar net (benchmarks/invariant_step.py); false: the plain step
    # (each rank's shard in one pass, a float32 allreduce).
    invariant: bool = False
    groups: int = 16  # groups of every global batch in the invariant step: at most this many ranks
    # Transfer (distnn/train/transfer.py): start from a checkpoint's parameters where names and
    # shapes match, except the layers `reset` names; never update the layers `freeze` names, or
    # every layer up to and including `freeze_until`.
    init_from: str | None = None
    reset: tuple = ()
    freeze: tuple = ()
    freeze_until: str | None = None


@dataclass(frozen=True)
class OptimizerConfig:
    """`optimizer:` one of distnn.optim.OPTIMIZERS (the update rules, and lbfgs). `params`: its
    hyper-parameters as the rule declares them (checked, defaults filled in), written flat
    beside `name` in the YAML."""

    name: str = "momentum"
    params: Mapping[str, Any] = field(default_factory=dict)
    # {glob: multiplier}: the learning rate of the layers whose name matches (the first glob
    # that does, in order) times the multiplier, for every rule (distnn/optim/scaled.py).
    lr_mult: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.params:  # not given: the rule's own defaults (whatever `name` is)
            object.__setattr__(self, "params", defaults("optimizer", self.name))


@dataclass(frozen=True)
class ScheduleConfig:
    """`schedule:` a schedule of distnn.optim.SCHEDULES. `params`: what make_schedule takes for
    it (base_lr, its own keys, warmup_epochs, warmup_start_factor; checked, defaults filled in),
    flat beside `name` in the YAML. The three other keys are the trainer's."""

    name: str = "constant"
    per: str = "step"  # evaluate the schedule every "step" or once per "epoch"
    scale_lr: bool = False  # Goyal et al.: base_lr * train.global_batch / reference_batch
    reference_batch: int = 256
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.params:  # not given: the schedule's own defaults
            object.__setattr__(self, "params", defaults("schedule", self.name))

    @property
    def base_lr(self) -> float:
        """The configured rate, before scale_lr."""
        return float(self.params["base_lr"])


@dataclass(frozen=True)
class EarlyStopConfig:
    enabled: bool = True
    monitor: str = "val_loss"
    mode: str = "min"
    patience: int = 5
    min_delta: float = 0.0


@dataclass(frozen=True)
class CheckpointConfig:
    every_epochs: int = 1
    every_steps: int = 0
    keep_best: int = 1
    keep_last: int = 2  # step-numbered checkpoints kept (last.h5 links the newest)


@dataclass(frozen=True)
class CommConfig:
    backend: str = "auto"  # auto | local | mpi | ray
    timeout: float = 300.0  # seconds a collective may take before the job aborts (0: none)
    workers: int = 2  # ray: number of worker actors (--workers overrides); elastic: the most
    workers_min: int = 0  # ray: elastic down to this many (0: not elastic, always `workers`)
    replace_timeout: float = 60.0  # ray elastic: seconds to wait for a dead worker's replacement
    max_failures: int = 0  # ray: worker-group restarts from the last checkpoint (--max-failures)
    # ray: how collectives move data. auto: POSIX shared memory when every worker is on one
    # x86-64 node, else Ray's object store; object_store / shm: force one (shm needs one node).
    transport: str = "auto"
    # overlap: gradients travel in buckets of about bucket_mb MB, in reverse layer order, each
    # bucket's allreduce started as soon as backward has finished its layers (the same bits).
    # Off by default: distnn puts a rank on every core, so communication has no core of its own
    # (measured here: neutral under MPI, 15 % slower over Ray's object store; README).
    bucket_mb: float = 1.0
    overlap: bool = False
    compress: str = "none"  # none | bf16 | fp16: gradients sent in 16 bits, error feedback


@dataclass(frozen=True)
class LogConfig:
    """`log:` what training reports beyond the per-epoch lines (distnn/watch/)."""

    every_steps: int = 10  # a "step" line: loss and accuracy of the last n steps (0: off)
    layers_every_steps: int = 50  # a "layers" line: per-layer health (0: off)
    warn_window: int = 5  # layers lines in a row with an update ratio out of band: a warning
    gap_warning: float = 0.15  # train minus val accuracy above this at an epoch end: a warning
    trace: bool = False  # a per-rank Chrome trace in <run_dir>/trace/ (distnn trace merges)
    trace_mb: float = 16.0  # the most each rank's trace keeps (the oldest spans go first)
    tensorboard: bool = False  # also write TensorBoard event files (the `tensorboard` extra)


@dataclass(frozen=True)
class Config:
    name: str = "quickstart"
    seed: int = 0
    model: tuple = ()
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    early_stopping: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    comm: CommConfig = field(default_factory=CommConfig)
    log: LogConfig = field(default_factory=LogConfig)


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
CHOICES = {
    "train.loss": ("softmax", "svm"),
    "train.on_divergence": ("stop", "rollback"),
    "data.validate_on": ("holdout", "test"),
    "data.preprocess": ("channel_mean_std", "mean_image", "pca_whiten"),
    "optimizer.name": tuple(optim.OPTIMIZERS),
    "schedule.name": tuple(optim.SCHEDULES),
    "schedule.per": ("step", "epoch"),
    "early_stopping.monitor": ("val_loss", "val_accuracy"),
    "early_stopping.mode": ("min", "max"),
    "comm.backend": ("auto", "local", "mpi", "ray"),
    "comm.transport": ("auto", "object_store", "shm"),
    "comm.compress": ("none", "bf16", "fp16"),
}
POSITIVE = {"train.epochs", "train.global_batch", "train.grad_accum", "schedule.reference_batch",
            "checkpoint.keep_best", "checkpoint.keep_last", "comm.workers", "train.groups",
            "comm.bucket_mb", "data.whiten_eps",
            "train.divergence_factor", "log.warn_window", "log.trace_mb"}
NON_NEGATIVE = {"seed", "data.val_size", "data.train_size", "data.folds", "data.fold", "train.l2",
                "train.l1", "data.pca_components",
                "train.max_steps", "train.eval_every_steps", "train.consistency_every",
                "train.threads", "train.clip_grad_norm", "train.max_rollbacks",
                "early_stopping.patience", "early_stopping.min_delta",
                "checkpoint.every_epochs", "checkpoint.every_steps",
                "comm.timeout", "comm.max_failures", "comm.workers_min", "comm.replace_timeout",
                "log.every_steps", "log.layers_every_steps", "log.gap_warning"}
OPEN_UNIT = {"train.rollback_lr_factor"}  # in (0, 1)
# optimizer.* and schedule.* hyper-parameters: distnn.optim declares them (hparams_of).
SECTIONS = {"optimizer": OptimizerConfig, "schedule": ScheduleConfig}


def yaml11_float(value):
    """PyYAML (YAML 1.1) reads '1e-3' as a string; accept it as the number the user meant."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _check_value(key: str, value, hint):
    """Coerce/validate one leaf against its annotation and the range tables above."""
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: {value!r} is not a boolean (true/false)")
    elif hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: {value!r} is not an integer")
    elif hint is float:
        value = yaml11_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: {value!r} is not a number")
        value = float(value)
        if not math.isfinite(value):  # inf/nan pass every range check below, then misbehave
            raise ConfigError(f"{key}: {value!r} is not a finite number")
    elif hint is tuple:  # a list of layer names (train.freeze, train.reset)
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: {value!r} is not a list of layer names")
        value = tuple(value)
    elif hint == Mapping[str, float]:  # optimizer.lr_mult
        value = _multipliers(key, value)
    elif hint in (str, str | None) and not (
            isinstance(value, str) or (value is None and hint is not str)):
        raise ConfigError(f"{key}: {value!r} is not a string")
    if key == "name" and not NAME.fullmatch(value):
        raise ConfigError(f"name: {value!r} is not a run name; expected letters, digits, '.', "
                          f"'_' or '-', starting with a letter or digit (it names runs/<name>-*)")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{key}: {value!r} must be > 0")
    if key in NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{key}: {value!r} must be >= 0")
    if key in OPEN_UNIT and not 0 < value < 1:
        raise ConfigError(f"{key}: {value!r} must be in (0, 1)")
    return value


def _multipliers(key: str, value) -> dict[str, float]:
    """{glob: multiplier} with every multiplier a finite number >= 0."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise ConfigError(f"{key}: {value!r} is not a mapping of layer-name globs to "
                          f"multipliers, e.g. {{'conv*': 0.1}}")
    out = {}
    for glob, mult in value.items():
        mult = yaml11_float(mult)
        if isinstance(mult, bool) or not isinstance(mult, (int, float)) \
                or not math.isfinite(mult) or mult < 0:
            raise ConfigError(f"{key}.{glob}: {mult!r}, expected a finite number >= 0")
        out[glob] = float(mult)
    return out


def mapping(raw, prefix: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: {raw!r} is not a mapping")
    return raw


def build(cls, raw: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping(raw, prefix)) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"expected some of {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in raw.items():
        key, hint = f"{prefix}.{name}" if prefix else name, hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = build(hint, value, key)
        elif name == "model":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"model: {value!r} is not a list of layer specs (mappings)")
            kwargs[name] = tuple(dict(v) for v in value)
        else:
            kwargs[name] = _check_value(key, value, hint)
    return cls(**kwargs)


def defaults(section: str, name: str) -> dict[str, Any]:
    """The hyper-parameters distnn.optim declares for rule `name`, at their defaults ({} for an
    unknown name or one without a default for every key: checked where the config is built)."""
    try:
        return optim.resolve_for(section, name, {})
    except ValueError:
        return {}
