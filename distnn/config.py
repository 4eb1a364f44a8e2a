"""The run configuration: frozen dataclasses, loaded from YAML and `--set key=value` overrides.

Every key is checked where it enters: unknown keys, wrong types and out-of-range values raise
ConfigError naming the dotted key, the value and what was expected.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A configuration key is unknown, of the wrong type or out of range."""


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "mini_mnist"
    data_dir: str | None = None
    val_size: int = 0  # samples held out of the training split for validation (0: use test)
    augment: bool = False  # random crop (pad 4) + horizontal flip; off for digits
    normalize: bool = True
    prefetch: bool = True


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    global_batch: int = 64
    grad_accum: int = 1
    loss: str = "softmax"
    l2: float = 0.0
    max_steps: int = 0  # stop after this many steps in total (0: no limit)
    eval_every_steps: int = 0  # validate every n steps as well as every epoch (0: epochs only)
    consistency_every: int = 200  # compare a parameter checksum across ranks every n steps
    divergence_factor: float = 3.0  # stop when the loss exceeds this times the initial loss
    threads: int = 0  # threads per rank for the layers (0: cores / ranks, at least 1)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = "momentum"
    mu: float = 0.9
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    decay_rate: float = 0.99
    weight_decay: float = 0.0  # AdamW's decoupled decay


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = "constant"
    base_lr: float = 0.05
    per: str = "step"  # evaluate the schedule every "step" or once per "epoch"
    drop: float = 0.5
    every: float = 10.0
    gamma: float = 0.95
    k: float = 0.1
    total_epochs: float = 0.0  # cosine length (0: train.epochs)
    min_lr: float = 0.0
    warmup_epochs: float = 0.0
    warmup_start_factor: float = 0.1
    scale_lr: bool = False  # Goyal et al.: base_lr * global_batch / reference_batch
    reference_batch: int = 256
    factor: float = 0.1  # plateau
    patience: int = 5
    cooldown: int = 0


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


@dataclass(frozen=True)
class CommConfig:
    backend: str = "auto"  # auto | local | mpi | ray
    timeout: float = 300.0  # seconds a collective may take before the job aborts (0: none)
    workers: int = 2  # ray: number of worker actors (--workers overrides)
    max_failures: int = 0  # ray: worker-group restarts from the last checkpoint (--max-failures)


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


CHOICES = {
    "train.loss": ("softmax", "svm"),
    "optimizer.name": ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw"),
    "schedule.name": ("constant", "step", "exponential", "inverse_time", "cosine", "plateau"),
    "schedule.per": ("step", "epoch"),
    "early_stopping.monitor": ("val_loss", "val_accuracy"),
    "early_stopping.mode": ("min", "max"),
    "comm.backend": ("auto", "local", "mpi", "ray"),
}
POSITIVE = {"train.epochs", "train.global_batch", "train.grad_accum", "schedule.reference_batch",
            "checkpoint.keep_best", "comm.workers", "schedule.base_lr", "train.divergence_factor",
            "optimizer.eps", "schedule.drop", "schedule.gamma", "schedule.factor"}
NON_NEGATIVE = {"seed", "data.val_size", "train.l2", "train.max_steps", "train.eval_every_steps",
                "train.consistency_every", "train.threads", "optimizer.weight_decay",
                "schedule.every", "schedule.k", "schedule.total_epochs", "schedule.min_lr",
                "schedule.warmup_epochs", "schedule.patience", "schedule.cooldown",
                "early_stopping.patience", "early_stopping.min_delta",
                "checkpoint.every_epochs", "checkpoint.every_steps", "comm.timeout",
                "comm.max_failures"}
UNIT = {"optimizer.mu", "optimizer.beta1", "optimizer.beta2", "optimizer.decay_rate",
        "schedule.drop", "schedule.gamma", "schedule.factor", "schedule.warmup_start_factor"}


def _yaml11_float(value):
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
        value = _yaml11_float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: {value!r} is not a number")
        value = float(value)
    elif hint in (str, str | None):
        if not (isinstance(value, str) or (value is None and hint is not str)):
            raise ConfigError(f"{key}: {value!r} is not a string")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{key}: {value!r} must be > 0")
    if key in NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{key}: {value!r} must be >= 0")
    if key in UNIT and not 0 <= value < 1:
        raise ConfigError(f"{key}: {value!r} must be in [0, 1)")
    return value


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: {raw!r} is not a mapping")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(f"unknown key(s) {', '.join(where + k for k in unknown)}; "
                          f"expected some of {', '.join(sorted(names))}")
    kwargs = {}
    for name, value in raw.items():
        key, hint = f"{prefix}.{name}" if prefix else name, hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = _build(hint, value, key)
        elif name == "model":
            if not isinstance(value, (list, tuple)) or not all(isinstance(v, dict) for v in value):
                raise ConfigError(f"model: {value!r} is not a list of layer specs (mappings)")
            kwargs[name] = tuple(dict(v) for v in value)
        else:
            kwargs[name] = _check_value(key, value, hint)
    return cls(**kwargs)


def from_dict(raw: dict) -> Config:
    """A validated Config from nested plain data (missing keys take their defaults)."""
    return _build(Config, raw or {}, "")


def to_dict(cfg: Config) -> dict:
    """Nested plain data (lists, dicts, scalars), suitable for YAML and JSON."""
    out = dataclasses.asdict(cfg)
    out["model"] = [dict(layer) for layer in cfg.model]
    return out


def parse_override(text: str) -> tuple[list[str], object]:
    """'train.epochs=5' -> (['train', 'epochs'], 5); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. train.epochs=5")
    key, value = text.split("=", 1)
    if not key.strip():
        raise ConfigError(f"--set {text!r}: empty key")
    return key.strip().split("."), yaml.safe_load(value)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to nested plain data (validated later by from_dict)."""
    for text in overrides or []:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
    return raw


def bundled_config_path(name: str) -> Path:
    return Path(__file__).parent / "configs" / f"{name}.yaml"


def load_config(source: str | None, overrides: list[str] | None = None) -> Config:
    """From a YAML file path or a bundled config name (None: quickstart), then overrides."""
    path = Path(source) if source else bundled_config_path("quickstart")
    if source and not path.exists() and bundled_config_path(source).exists():
        path = bundled_config_path(source)
    if not path.exists():
        raise ConfigError(f"config {source!r}: no such file, and not a bundled config name")
    with open(path) as fh:
        raw = yaml.safe_load(fh) or {}
    return from_dict(apply_overrides(raw, overrides or []))


def save_config(cfg: Config, path: Path) -> None:
    with open(path, "w") as fh:
        yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
