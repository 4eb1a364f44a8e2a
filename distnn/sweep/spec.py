"""SWEEP.yaml: what a sweep searches, in which stages, and how it stops trials.

    base: fashion_mnist            # a bundled config name or a path (relative to this file)
    seed: 0                        # the sweep's seed: the same seed gives the same trials
    trials: 24                     # optional with stages (then their sum)
    workers_per_trial: 1           # > 1: each trial runs under mpiexec -n W (the `mpi` extra)
    space:                         # dotted config keys; layers by index or name (model.4.rate)
      schedule.base_lr: {loguniform: [1.0e-4, 1.0e-1]}
      optimizer.name: {choice: [momentum, adam]}
    stages:                        # coarse to fine
      - {trials: 16, epochs: 1}
      - {trials: 8, epochs: 5, narrow_around_top: 4}
    metric: val_accuracy           # or val_loss; picked on the validation split
    early_stop: {divergence: 3.0, halving: asha, reduction_factor: 4, grace_epochs: 1}
    folds: 0                       # k >= 2: every trial is k runs, its metric their mean

Every mistake is a SweepError naming the key, the value and what was expected.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from distnn.config import (
    Config,
    ConfigError,
    apply_overrides,
    bundled_config_path,
    from_dict,
    parse_yaml,
    to_dict,
)
from distnn.config.loading import read_config_file
from distnn.config.schema import yaml11_float

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice")
METRICS = ("val_accuracy", "val_loss")
HALVING = ("none", "asha")


class SweepError(ValueError):
    """A sweep file's key is unknown, of the wrong type or out of range (exit 2)."""


class SweepFailed(SweepError):
    """The sweep cannot go on, through no fault of its file (exit 1): e.g. every trial of a
    stage diverged, so there is nothing to narrow around."""


@dataclass(frozen=True)
class Dimension:
    """One searched key: `kind` one of DISTRIBUTIONS; `values` [low, high] or the choices."""

    key: str
    kind: str
    values: tuple

    @property
    def log(self) -> bool:
        return self.kind == "loguniform"


@dataclass(frozen=True)
class Stage:
    trials: int
    epochs: int
    narrow_around_top: int = 0


@dataclass(frozen=True)
class EarlyStop:
    # a trial stops once its loss passes this x its first loss (0: the base config's own rule)
    divergence: float = 3.0
    halving: str = "none"  # asha: asynchronous successive halving on the metric
    reduction_factor: float = 4.0  # ASHA keeps the best 1/reduction_factor at each rung
    grace_epochs: int = 1  # ASHA's first rung, in epochs


@dataclass(frozen=True)
class SweepSpec:
    base: str  # a bundled config name or an absolute path
    space: tuple[Dimension, ...]
    stages: tuple[Stage, ...]
    seed: int = 0
    workers_per_trial: int = 1
    metric: str = "val_accuracy"
    early_stop: EarlyStop = field(default_factory=EarlyStop)
    folds: int = 0
    base_raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def trials(self) -> int:
        return sum(s.trials for s in self.stages)

    @property
    def mode(self) -> str:
        return "min" if self.metric == "val_loss" else "max"

    def to_dict(self) -> dict:
        """Plain data for sweep.yaml: every default filled in, and the base config's data."""
        out: dict[str, Any] = {
            "base": self.base, "seed": self.seed, "trials": self.trials,
            "workers_per_trial": self.workers_per_trial,
            "space": {d.key: {d.kind: list(d.values)} for d in self.space},
            "stages": [asdict(s) for s in self.stages], "metric": self.metric,
            "early_stop": asdict(self.early_stop), "folds": self.folds,
            "base_config": self.base_raw}  # what `base` held when the sweep started
        return out


TOP_KEYS = {"base", "seed", "trials", "workers_per_trial", "space", "stages", "metric",
            "early_stop", "folds"}


def _int(key: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise SweepError(f"{key}: {value!r}, expected an integer >= {low}")
    return value


def _number(key: str, value, low: float = 0.0) -> float:
    value = yaml11_float(value)  # YAML 1.1 reads 1e-3 as a string
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < low:
        raise SweepError(f"{key}: {value!r}, expected a finite number >= {low:g}")
    return float(value)


def _dimension(key: str, raw) -> Dimension:
    where = f"space.{key}"
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in DISTRIBUTIONS:
        raise SweepError(f"{where}: {raw!r}, expected one of "
                         f"{', '.join('{' + d + ': [...]}' for d in DISTRIBUTIONS)}")
    kind, values = next(iter(raw.items()))
    if not isinstance(values, list) or not values:
        raise SweepError(f"{where}: {kind} {values!r}, expected a non-empty list")
    if kind == "choice":
        if len(values) != len({json.dumps(v, sort_keys=True) for v in values}):
            raise SweepError(f"{where}: choice {values!r} repeats a value; expected distinct "
                             f"choices")
        return Dimension(key, kind, tuple(values))
    if len(values) != 2:
        raise SweepError(f"{where}: {kind} {values!r}, expected [low, high]")
    low: float
    high: float
    if kind == "randint":
        low, high = (_int(where, v, -2**62) for v in values)
    else:
        low, high = (_number(where, v, -math.inf) for v in values)
    if not low < high:
        raise SweepError(f"{where}: {kind} [{low!r}, {high!r}] is an empty or inverted range; "
                         f"expected low < high")
    if kind == "loguniform" and low <= 0:
        raise SweepError(f"{where}: loguniform [{low!r}, {high!r}] has a bound <= 0; expected "
                         f"0 < low < high (the search runs on log(value))")
    return Dimension(key, kind, (low, high))


def _stages(raw, trials) -> tuple[Stage, ...]:
    if raw is None:
        if trials is None:
            raise SweepError("trials: missing; expected the number of trials (or stages:)")
        return (Stage(_int("trials", trials, 1), 0),)
    if not isinstance(raw, list) or not raw:
        raise SweepError(f"stages: {raw!r}, expected a non-empty list of "
                         f"{{trials: N, epochs: E[, narrow_around_top: K]}}")
    out: list[Stage] = []
    for i, node in enumerate(raw):
        where = f"stages[{i}]"
        if not isinstance(node, dict):
            raise SweepError(f"{where}: {node!r}, expected a mapping")
        unknown = sorted(set(node) - {"trials", "epochs", "narrow_around_top"})
        if unknown:
            raise SweepError(f"{where}: unknown key(s) {', '.join(unknown)}; expected trials, "
                             f"epochs, narrow_around_top")
        stage = Stage(_int(f"{where}.trials", node.get("trials"), 1),
                      _int(f"{where}.epochs", node.get("epochs", 0), 0),
                      _int(f"{where}.narrow_around_top", node.get("narrow_around_top", 0), 0))
        if i == 0 and stage.narrow_around_top:
            raise SweepError(f"{where}.narrow_around_top: {stage.narrow_around_top}, expected 0 "
                             f"in the first stage (there is no earlier stage to narrow around)")
        if i > 0:
            before = out[-1].trials
            if stage.trials > before:
                raise SweepError(f"{where}.trials: {stage.trials}, more than the {before} trials "
                                 f"stage {i - 1} produces; expected at most {before} (coarse to "
                                 f"fine: each stage runs fewer, longer trials)")
            if stage.narrow_around_top > before:
                raise SweepError(f"{where}.narrow_around_top: {stage.narrow_around_top}, more "
                                 f"than the {before} trials stage {i - 1} produces; expected at "
                                 f"most {before}")
        out.append(stage)
    if trials is not None and _int("trials", trials, 1) != sum(s.trials for s in out):
        raise SweepError(f"trials: {trials}, but the stages run {sum(s.trials for s in out)}; "
                         f"expected their sum (or leave trials out)")
    return tuple(out)


def _early_stop(raw) -> EarlyStop:
    if raw is None:
        return EarlyStop()
    if not isinstance(raw, dict):
        raise SweepError(f"early_stop: {raw!r}, expected a mapping")
    names = set(EarlyStop.__dataclass_fields__)
    unknown = sorted(set(raw) - names)
    if unknown:
        raise SweepError(f"early_stop: unknown key(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(sorted(names))}")
    halving = raw.get("halving", "none")
    if halving not in HALVING:
        raise SweepError(f"early_stop.halving: {halving!r}, expected one of {', '.join(HALVING)}")
    rf = _number("early_stop.reduction_factor", raw.get("reduction_factor", 4.0), 1.0)
    if rf <= 1:
        raise SweepError(f"early_stop.reduction_factor: {rf!r}, expected a number > 1")
    divergence = _number("early_stop.divergence", raw.get("divergence", 3.0))
    if 0 < divergence <= 1:
        raise SweepError(f"early_stop.divergence: {divergence!r}, expected 0 (the base config's "
                         f"rule) or a factor > 1 of the first loss")
    return EarlyStop(divergence, halving, rf,
                     _int("early_stop.grace_epochs", raw.get("grace_epochs", 1), 1))


def resolve_base(base, folder: Path) -> tuple[str, dict]:
    """(the base as sweep.yaml records it, its raw config data): a path (absolute, or relative
    to the sweep file's folder), else a bundled config name."""
    if not isinstance(base, str) or not base:
        raise SweepError(f"base: {base!r}, expected a bundled config name or a config path")
    path = folder / base  # an absolute `base` stays itself
    if path.is_file():
        return str(path.resolve()), read_config_file(path)
    if bundled_config_path(base).is_file():
        return base, read_config_file(bundled_config_path(base))
    raise SweepError(f"base: {base!r} is neither a config file beside the sweep file "
                     f"({path}) nor a bundled config name")


def parse_spec(raw, folder: Path, folds: int | None = None) -> SweepSpec:
    """A checked SweepSpec from the data of a sweep file in `folder`; `folds` (--folds)
    overrides the file's. The space is tried on the base config (each bound, each choice), so
    a key the config does not have is refused here, before any trial runs."""
    if not isinstance(raw, dict):
        raise SweepError(f"sweep: {raw!r}, expected a mapping with base:, space:, stages:")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise SweepError(f"unknown key(s) {', '.join(unknown)}; expected some of "
                         f"{', '.join(sorted(TOP_KEYS))}")
    base, base_raw = resolve_base(raw.get("base"), folder)
    space_raw = raw.get("space")
    if not isinstance(space_raw, dict) or not space_raw:
        raise SweepError(f"space: {space_raw!r}, expected a mapping of config keys to "
                         f"distributions, e.g. schedule.base_lr: {{loguniform: [1e-4, 1e-1]}}")
    space = tuple(_dimension(str(k), v) for k, v in space_raw.items())
    metric = raw.get("metric", "val_accuracy")
    if metric not in METRICS:
        raise SweepError(f"metric: {metric!r}, expected one of {', '.join(METRICS)}")
    spec = SweepSpec(
        base=base, space=space, stages=_stages(raw.get("stages"), raw.get("trials")),
        seed=_int("seed", raw.get("seed", 0), 0),
        workers_per_trial=_int("workers_per_trial", raw.get("workers_per_trial", 1), 1),
        metric=metric, early_stop=_early_stop(raw.get("early_stop")),
        folds=_int("folds", raw.get("folds", 0) if folds is None else folds, 0),
        base_raw=base_raw)
    if spec.folds == 1:
        raise SweepError("folds: 1, expected 0 (no cross-validation) or at least 2")
    if spec.folds and spec.early_stop.halving != "none":
        raise SweepError(f"early_stop.halving: {spec.early_stop.halving} with folds: "
                         f"{spec.folds}; expected one of them (a cross-validated trial is "
                         f"judged on the mean of its folds, known only at its end)")
    taken = reserved(spec)
    for dim in space:
        if dim.key in taken:
            raise SweepError(f"space.{dim.key}: the sweep sets this key itself ({taken[dim.key]});"
                             f" expected another key")
    for dim in space:  # every value the space can give must make a valid config
        probes = dim.values if dim.kind == "choice" else dim.values[:2]
        for value in probes:
            try:
                trial_config(spec, {dim.key: value}, stage=0)
            except SweepError as exc:
                raise SweepError(f"space.{dim.key}: {exc}") from None
    return spec


def reserved(spec: SweepSpec) -> dict[str, str]:
    """The config keys trial_config sets, so a space may not search them: {key: why}."""
    out = {"train.epochs": "a stage's epochs", "train.threads": "from --parallel",
           "comm.backend": "from workers_per_trial",
           "early_stopping.monitor": "the sweep's metric", "early_stopping.mode": "the metric's"}
    if spec.early_stop.divergence:
        out.update({"train.divergence_factor": "early_stop.divergence",
                    "train.on_divergence": "early_stop.divergence"})
    if spec.folds:
        out.update({k: "folds" for k in ("data.val_size", "data.folds", "data.fold")})
    return out


def load_spec(path: str | Path, folds: int | None = None) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file {str(path)!r}: no such file; expected a SWEEP.yaml")
    try:
        raw = read_config_file(path)
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    return parse_spec(raw, path.parent, folds)


def _set_layer_key(model: list, path: list[str], value) -> None:
    """model.<index or layer name>.<key> = value on the raw layer list."""
    if len(path) != 2:
        raise SweepError(f"model.{'.'.join(path)}: expected model.<layer index or name>.<key>")
    which, key = path
    names = [layer.get("name", f"{layer.get('type')}{i}") for i, layer in enumerate(model)]
    if which.isdigit() and int(which) < len(model):
        index = int(which)
    elif which in names:
        index = names.index(which)
    else:
        raise SweepError(f"model.{which}: no such layer; expected an index below {len(model)} "
                         f"or one of the names {', '.join(names)}")
    model[index] = {**model[index], key: value}


def _known(raw: dict, path: list[str]) -> bool:
    """Whether a dotted key names an existing section and key of the config (optimizer and
    schedule keys are checked by the rule they belong to, when the config is built)."""
    defaults = to_dict(Config())
    section = path[0]
    if len(path) == 1:
        return section in defaults and not isinstance(defaults[section], dict)
    if len(path) != 2 or not isinstance(defaults.get(section), dict):
        return False
    return section in ("optimizer", "schedule") or path[1] in defaults[section]


def trial_config(spec: SweepSpec, params: dict, stage: int, fold: int | None = None,
                 threads: int = 0, backend: str = "local"):
    """The checked Config of one trial (one fold of it): the base, its sampled `params`, the
    stage's epochs, the sweep's divergence limit and the fold."""
    raw = json.loads(json.dumps(spec.base_raw))  # a deep copy of plain data
    overrides: list[str] = []
    model = list(raw.get("model") or [])
    for key, value in params.items():
        path = key.split(".")
        if path[0] == "model":
            _set_layer_key(model, path[1:], value)
        elif not _known(raw, path):
            raise SweepError(f"{key}: not a config key; expected a section key such as "
                             f"train.l2, schedule.base_lr or model.<layer>.<key>")
        else:
            overrides.append(f"{key}={json.dumps(value)}")
    raw["model"] = model
    st = spec.stages[stage]
    if st.epochs:
        overrides.append(f"train.epochs={st.epochs}")
    if spec.early_stop.divergence:
        overrides += [f"train.divergence_factor={spec.early_stop.divergence}",
                      "train.on_divergence=stop"]
    if fold is not None:
        overrides += ["data.val_size=0", f"data.folds={spec.folds}", f"data.fold={fold}"]
    overrides += [f"train.threads={threads}", f"comm.backend={backend}",
                  f"early_stopping.monitor={spec.metric}",  # best.h5: the metric's best epoch
                  f"early_stopping.mode={spec.mode}"]
    try:
        return from_dict(apply_overrides(raw, overrides))
    except ConfigError as exc:
        raise SweepError(str(exc)) from None


def read_sweep_yaml(sweep_dir: Path) -> dict:
    """The resolved sweep.yaml of a sweep directory, as plain data."""
    path = Path(sweep_dir) / "sweep.yaml"
    try:
        data = parse_yaml(path.read_bytes(), str(path))
    except OSError as exc:
        raise SweepError(f"{path}: cannot read: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise SweepError(str(exc)) from None
    if not isinstance(data, dict):
        raise SweepError(f"{path}: expected a mapping")
    return data
