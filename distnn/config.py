"""The run configuration: frozen dataclasses, loaded from YAML and `--set key=value` overrides.

Every key is checked where it enters: unknown keys, wrong types and out-of-range values raise
ConfigError naming the dotted key, the value and what was expected.

The `optimizer:` and `schedule:` keys are what distnn.optim declares for the rule `name` names
(distnn.optim.hparams_of), checked there. A key that only other rules take is an error naming
them (`optimizer.mu: adam does not take mu (taken by momentum, nesterov); ...`), except that
`--set optimizer.name=adam` drops the file's keys that the new rule does not take.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from distnn import optim


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
    """`optimizer:` an update rule of distnn.optim.RULES. `params`: its hyper-parameters as the
    rule declares them (checked, defaults filled in), written flat beside `name` in the YAML."""

    name: str = "momentum"
    params: Mapping[str, Any] = field(default_factory=lambda: _defaults("optimizer", "momentum"))


@dataclass(frozen=True)
class ScheduleConfig:
    """`schedule:` a schedule of distnn.optim.SCHEDULES. `params`: what make_schedule takes for
    it (base_lr, its own keys, warmup_epochs, warmup_start_factor; checked, defaults filled in),
    flat beside `name` in the YAML. The three other keys are the trainer's."""

    name: str = "constant"
    per: str = "step"  # evaluate the schedule every "step" or once per "epoch"
    scale_lr: bool = False  # Goyal et al.: base_lr * train.global_batch / reference_batch
    reference_batch: int = 256
    params: Mapping[str, Any] = field(default_factory=lambda: _defaults("schedule", "constant"))

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
    "optimizer.name": tuple(optim.RULES),
    "schedule.name": tuple(optim.SCHEDULES),
    "schedule.per": ("step", "epoch"),
    "early_stopping.monitor": ("val_loss", "val_accuracy"),
    "early_stopping.mode": ("min", "max"),
    "comm.backend": ("auto", "local", "mpi", "ray"),
}
POSITIVE = {"train.epochs", "train.global_batch", "train.grad_accum", "schedule.reference_batch",
            "checkpoint.keep_best", "comm.workers", "train.divergence_factor"}
NON_NEGATIVE = {"seed", "data.val_size", "train.l2", "train.max_steps", "train.eval_every_steps",
                "train.consistency_every", "train.threads", "early_stopping.patience",
                "early_stopping.min_delta", "checkpoint.every_epochs", "checkpoint.every_steps",
                "comm.timeout", "comm.max_failures"}
# optimizer.* and schedule.* hyper-parameters: distnn.optim declares them (hparams_of).
SECTIONS = {"optimizer": OptimizerConfig, "schedule": ScheduleConfig}


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
    elif hint in (str, str | None) and not (
            isinstance(value, str) or (value is None and hint is not str)):
        raise ConfigError(f"{key}: {value!r} is not a string")
    if key in CHOICES and value not in CHOICES[key]:
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(CHOICES[key])}")
    if key in POSITIVE and not value > 0:
        raise ConfigError(f"{key}: {value!r} must be > 0")
    if key in NON_NEGATIVE and not value >= 0:
        raise ConfigError(f"{key}: {value!r} must be >= 0")
    return value


def _mapping(raw, prefix: str) -> dict:
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: {raw!r} is not a mapping")
    return raw


def _build(cls, raw: dict, prefix: str):
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(_mapping(raw, prefix)) - names)
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


# -- optimizer and schedule: their keys pass through to what distnn.optim declares ------------
# The cross-section glue: a schedule that takes total_epochs gets train.epochs unless given (0
# counts as not given, as in configs saved by earlier versions); one that takes mode always gets
# early_stopping.mode (plateau must judge the metric the way early stopping does).
NOT_HERE = {"mode": "early_stopping.mode"}


def _linked(cfg: Config, section: str, name: str, given: Mapping) -> dict[str, Any]:
    keys = [p.key for p in optim.hparams_of(section, name)] if section == "schedule" else []
    linked = {"total_epochs": float(cfg.train.epochs), "mode": cfg.early_stopping.mode}
    return {k: v for k, v in linked.items() if k in keys and not given.get(k)}


def _defaults(section: str, name: str) -> dict[str, Any]:
    return optim.resolve_for(section, name, {})


def _drop_foreign(section: str, node: dict, keep: set[str]) -> None:
    """Remove from `node` the keys its rule does not take but another rule does (not `keep`)."""
    if node.get("name") in optim.REGISTRIES[section]:
        for key in optim.foreign(section, node["name"], [k for k in node if k not in keep]):
            del node[key]


@contextmanager
def _named(section: str) -> Iterator[None]:
    """distnn.optim's ValueErrors as ConfigErrors naming the dotted key."""
    try:
        yield
    except optim.BadValue as exc:
        raise ConfigError(f"{section}.{exc.key}: {exc.detail}") from None
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None


def _section(section: str, cls: Any, raw: Any, cfg: Config) -> Any:
    """OptimizerConfig or ScheduleConfig: its own fields checked by _build, the other keys by
    what distnn.optim declares for `name` (plus what _linked takes from other sections)."""
    own = {f.name for f in dataclasses.fields(cls)} - {"params"}
    config = _build(cls, {k: v for k, v in _mapping(raw, section).items() if k in own}, section)
    given = {k: _yaml11_float(v) for k, v in raw.items() if k not in own}
    not_here = NOT_HERE if section == "schedule" else {}
    valid = sorted(own | {p.key for p in optim.hparams_of(section, config.name)} - set(not_here))
    for key in given:
        if key in not_here or not (key in valid or optim.takers(section, key)):
            why = f"comes from {not_here[key]}" if key in not_here else "unknown key"
            raise ConfigError(f"{section}.{key}: {why}; expected some of {', '.join(valid)}")
    linked = _linked(cfg, section, config.name, given)
    with _named(section):
        params = optim.resolve_for(section, config.name, {**given, **linked})
    return dataclasses.replace(config, params={k: v for k, v in params.items() if k not in linked})


def schedule_spec(cfg: Config) -> dict[str, Any]:
    """make_schedule's input for `cfg`: the schedule section, what other sections give it
    (_linked), and base_lr scaled by train.global_batch / reference_batch under scale_lr."""
    s = cfg.schedule
    spec = {"name": s.name, **s.params, **_linked(cfg, "schedule", s.name, s.params)}
    if s.scale_lr:
        spec["base_lr"] = optim.scaled_lr(s.base_lr, cfg.train.global_batch, s.reference_batch)
    return spec


def from_dict(raw: dict, *, strict: bool = True) -> Config:
    """A validated Config from nested plain data (missing keys take their defaults).

    An optimizer or schedule key that only another rule takes (`mu` with adam) is an error;
    strict=False drops it instead, for the resolved configs that earlier versions saved (in
    checkpoints and run directories), which list the keys of every rule."""
    raw = dict(_mapping(raw or {}, ""))
    sections = {s: dict(_mapping(raw.pop(s, {}), s)) for s in SECTIONS}
    cfg = _build(Config, raw, "")
    for section, cls in SECTIONS.items():
        if not strict:
            _drop_foreign(section, sections[section], keep=set())
        cfg = dataclasses.replace(cfg, **{section: _section(section, cls, sections[section], cfg)})
    with _named("optimizer"):  # what the constructors check across keys (min_lr <= base_lr)
        optim.make_optimizer(cfg.optimizer.name, **cfg.optimizer.params)
    with _named("schedule"):
        optim.make_schedule(schedule_spec(cfg))
    return cfg


def to_dict(cfg: Config) -> dict:
    """Nested plain data (lists, dicts, scalars), suitable for YAML and JSON."""
    out = dataclasses.asdict(cfg)
    out["model"] = [dict(layer) for layer in cfg.model]
    for section in SECTIONS:
        node = out[section]
        out[section] = {**{k: v for k, v in node.items() if k != "params"}, **node["params"]}
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
    """Apply `--set` overrides to nested plain data (validated later by from_dict).

    `--set optimizer.name=adam` (or schedule.name) also drops the file's keys that the new rule
    does not take but the one it replaces did (`mu`); keys set with --set are always kept."""
    given: dict[str, set[str]] = {}
    for text in overrides or []:
        path, value = parse_override(text)
        node = raw
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {text!r}: {part} is not a section")
        node[path[-1]] = value
        given.setdefault(path[0], set()).add(".".join(path[1:]))
    for section in SECTIONS:
        if "name" in given.get(section, ()) and isinstance(raw.get(section), dict):
            _drop_foreign(section, raw[section], keep=given[section])
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
