"""Build update rules and schedules by name, from config values. Errors name the bad key."""

from __future__ import annotations

from collections.abc import Mapping

from distnn.optim._check import known_keys, number
from distnn.optim.adam import Adam, AdamW
from distnn.optim.plateau import ReduceOnPlateau
from distnn.optim.rules import SGD, AdaGrad, Momentum, Nesterov, RMSProp, UpdateRule
from distnn.optim.schedules import (Constant, Cosine, Exponential, InverseTime, LinearWarmup,
                                    Schedule, StepDecay)

RULES: dict[str, type[UpdateRule]] = {
    cls.name: cls for cls in (SGD, Momentum, Nesterov, AdaGrad, RMSProp, Adam, AdamW)}
SCHEDULES: dict[str, type[Schedule]] = {
    cls.name: cls for cls in (Constant, StepDecay, Exponential, InverseTime, Cosine,
                              ReduceOnPlateau)}
WARMUP_KEYS = ("warmup_epochs", "warmup_start_factor")


def make_optimizer(name: str, **hparams) -> UpdateRule:
    """The update rule `name` (one of RULES) with its hyperparameters, e.g.
    make_optimizer("momentum", mu=0.9). Unknown names, unknown keywords and out-of-range values
    raise ValueError naming them."""
    cls = _lookup("optimizer", name, RULES)
    known_keys(f"optimizer {name}", hparams, cls.hparams)
    return cls(**hparams)


def make_schedule(cfg: Mapping) -> Schedule | LinearWarmup:
    """A schedule from a plain config dict:

        {"name": <one of SCHEDULES>, "base_lr": ..., <that schedule's keyword arguments>,
         "warmup_epochs": w (optional, 0 = none), "warmup_start_factor": s (optional, 0.1)}

    e.g. {"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 10, "warmup_epochs": 2}.
    With w > 0 the schedule is wrapped in LinearWarmup(schedule, w, s).
    """
    if not isinstance(cfg, Mapping):
        raise ValueError(f"schedule: config {cfg!r}, expected a dict with 'name' and 'base_lr'")
    if "name" not in cfg:
        raise ValueError(f"schedule: missing key 'name'; expected one of {', '.join(SCHEDULES)}")
    name = cfg["name"]
    cls = _lookup("schedule", name, SCHEDULES)
    kwargs = {k: v for k, v in cfg.items() if k != "name" and k not in WARMUP_KEYS}
    known_keys(f"schedule {name}", kwargs, cls.hparams)
    missing = [k for k in cls.required if k not in kwargs]
    if missing:
        raise ValueError(f"schedule {name}: missing key {missing[0]!r}")
    sched = cls(**kwargs)
    warmup = number(f"schedule {name}", "warmup_epochs", cfg.get("warmup_epochs", 0.0), low=0.0)
    if warmup == 0:
        return sched
    start = number(f"schedule {name}", "warmup_start_factor", cfg.get("warmup_start_factor", 0.1),
                   low=0.0, high=1.0)
    return LinearWarmup(sched, warmup, start)


def _lookup(kind: str, name, table: dict):
    if not isinstance(name, str) or name not in table:
        raise ValueError(f"{kind} {name!r} is unknown; expected one of {', '.join(table)}")
    return table[name]
