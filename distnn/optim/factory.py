"""Build update rules and schedules by name, from config values. Errors name the bad key.

The registries are the one list of names: a new rule or schedule is a class declaring its
`hparams` plus an entry here; distnn.config reads both through hparams_of and takers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import numpy as np

from distnn.optim import adam, lbfgs, plateau, rules, schedules
from distnn.optim._check import BadValue, known_keys
from distnn.optim.hparams import Declared, HParam, resolve
from distnn.optim.rules import UpdateRule
from distnn.optim.schedules import WARMUP, LinearWarmup, Schedule

RULES: dict[str, type[UpdateRule]] = {cls.name: cls for cls in (
    rules.SGD, rules.Momentum, rules.Nesterov, rules.AdaGrad, rules.RMSProp, adam.Adam,
    adam.AdamW)}
# Optimizers that are not a mini-batch update rule: the full-batch coordinator
# (distnn/train/full_batch.py) drives them. `optimizer.name` takes a name of either table.
FULL_BATCH: dict[str, type[UpdateRule]] = {lbfgs.LBFGS.name: lbfgs.LBFGS}
OPTIMIZERS: dict[str, type[UpdateRule]] = {**RULES, **FULL_BATCH}
SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (
    schedules.Constant, schedules.StepDecay, schedules.Exponential, schedules.InverseTime,
    schedules.Cosine, plateau.ReduceOnPlateau)}
REGISTRIES: dict[str, Mapping[str, type[Declared]]] = {"optimizer": OPTIMIZERS,
                                                      "schedule": SCHEDULES}
_WARMUP_KEYS = tuple(p.key for p in WARMUP)
T = TypeVar("T")


def hparams_of(kind: str, name: str) -> tuple[HParam, ...]:
    """What the factory takes for `name` of kind 'optimizer' (make_optimizer's keywords) or
    'schedule' (make_schedule's keys besides 'name', the warmup ones included); ValueError
    if there is no such rule or schedule."""
    declared = _lookup(kind, name, REGISTRIES[kind]).hparams
    return declared + WARMUP if kind == "schedule" else declared


def takers(kind: str, key: str) -> list[str]:
    """The names of the rules (kind 'optimizer') or schedules that take `key`."""
    return [name for name in REGISTRIES[kind]
            if any(p.key == key for p in hparams_of(kind, name))]


def foreign(kind: str, name: str, keys: Iterable[str]) -> list[str]:
    """Those of `keys` that `name` does not take but another rule (schedule) does."""
    taken = [p.key for p in hparams_of(kind, name)]
    return [k for k in keys if k not in taken and takers(kind, k)]


def resolve_for(kind: str, name: str, given: Mapping[str, Any]) -> dict[str, Any]:
    """`given` checked against what `name` declares (hparams_of), defaults filled in; BadValue
    names a bad key, and for a key of other rules those rules ('adam does not take mu')."""
    declared, others = hparams_of(kind, name), foreign(kind, name, given)
    if others:
        key = others[0]
        detail = (f"{name} does not take {key} (taken by {', '.join(takers(kind, key))}); "
                  f"{name} takes {', '.join(p.key for p in declared) or 'nothing'}")
        raise BadValue(f"{kind} {name}: {detail}", key, detail)
    return resolve(name, declared, given)


def make_optimizer(name: str, *, decay_mask: np.ndarray | None = None,
                   **hparams: Any) -> UpdateRule:
    """The update rule `name` (one of OPTIMIZERS) with its hyperparameters, e.g.
    make_optimizer("momentum", mu=0.9). `decay_mask`, the model's (P,) 0/1 mask of weights, goes
    to the rules that decay weights (uses_decay_mask: adamw); the others do not need it. Unknown
    names, unknown keywords and out-of-range values raise ValueError naming them."""
    cls = _lookup("optimizer", name, OPTIMIZERS)
    if cls.uses_decay_mask:
        return cls(decay_mask=decay_mask, **hparams)
    return cls(**hparams)


def make_schedule(cfg: Mapping[str, Any]) -> Schedule | LinearWarmup:
    """A schedule from a plain config dict:

        {"name": <one of SCHEDULES>, <that schedule's keyword arguments, base_lr among them>,
         "warmup_epochs": w (optional, 0 = none), "warmup_start_factor": s (optional, 0.1)}

    e.g. {"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 10, "warmup_epochs": 2}.
    With w > 0 the schedule is wrapped in LinearWarmup(schedule, w, s).
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"schedule: config {cfg!r}, expected a dict with 'name'")
    if "name" not in cfg:
        raise ValueError(f"schedule: missing key 'name'; expected one of {', '.join(SCHEDULES)}")
    name = cfg["name"]
    rest = {k: v for k, v in cfg.items() if k != "name"}
    known_keys(f"schedule {name}", rest, [p.key for p in hparams_of("schedule", name)])
    sched = SCHEDULES[name](**{k: v for k, v in rest.items() if k not in _WARMUP_KEYS})
    warmup = resolve(f"schedule {name}", WARMUP,
                     {k: v for k, v in rest.items() if k in _WARMUP_KEYS})
    if warmup["warmup_epochs"] == 0:
        return sched
    return LinearWarmup(sched, warmup["warmup_epochs"], warmup["warmup_start_factor"])


def _lookup(kind: str, name: Any, table: Mapping[str, T]) -> T:
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{kind} {name!r} is unknown; expected one of {', '.join(table)}")
    return table[name]
