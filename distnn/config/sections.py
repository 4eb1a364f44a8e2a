"""The `optimizer:` and `schedule:` sections: their keys pass through to what distnn.optim
declares for the rule `name` names (distnn.optim.hparams_of), checked there.

A key that only other rules take is an error naming them (`optimizer.mu: adam does not take mu
(taken by momentum, nesterov); ...`), except that `--set optimizer.name=adam` drops the file's
keys that the new rule does not take (loading.apply_overrides), and that a section written by an
earlier distnn (LEGACY) loads with the other rules' keys dropped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from distnn import optim
from distnn.config.schema import Config, ConfigError, build, mapping, yaml11_float

# The resolved config.yaml (run directory, checkpoint) that distnn wrote before optim declared
# its keys listed every rule's keys, flat: a section holding all of these is one of those.
LEGACY = {"optimizer": {"mu", "beta1", "beta2", "eps", "decay_rate", "weight_decay"},
          "schedule": {"drop", "every", "gamma", "k", "total_epochs", "min_lr", "factor",
                       "patience", "cooldown"}}


# -- optimizer and schedule: their keys pass through to what distnn.optim declares ------------
# The cross-section glue: a schedule that takes total_epochs gets train.epochs unless given (0
# counts as not given, as in configs saved by earlier versions); one that takes mode always gets
# early_stopping.mode (plateau must judge the metric the way early stopping does).
NOT_HERE = {"mode": "early_stopping.mode"}


def _linked(cfg: Config, section: str, name: str, given: Mapping) -> dict[str, Any]:
    keys = [p.key for p in optim.hparams_of(section, name)] if section == "schedule" else []
    linked = {"total_epochs": float(cfg.train.epochs), "mode": cfg.early_stopping.mode}
    return {k: v for k, v in linked.items() if k in keys and not given.get(k)}


def drop_foreign(section: str, node: dict, keep: set[str]) -> None:
    """Remove from `node` the keys its rule does not take but another rule does (not `keep`)."""
    if node.get("name") in optim.REGISTRIES[section]:
        for key in optim.foreign(section, node["name"], [k for k in node if k not in keep]):
            del node[key]


@contextmanager
def named(section: str) -> Iterator[None]:
    """distnn.optim's ValueErrors as ConfigErrors naming the dotted key."""
    try:
        yield
    except optim.BadValue as exc:
        raise ConfigError(f"{section}.{exc.key}: {exc.detail}") from None
    except ValueError as exc:
        raise ConfigError(f"{section}: {exc}") from None


def section_config(section: str, cls: Any, raw: Any, cfg: Config) -> Any:
    """OptimizerConfig or ScheduleConfig: its own fields checked by _build, the other keys by
    what distnn.optim declares for `name` (plus what _linked takes from other sections)."""
    own = {f.name for f in dataclasses.fields(cls)} - {"params"}
    config = build(cls, {k: v for k, v in mapping(raw, section).items() if k in own}, section)
    given = {k: yaml11_float(v) for k, v in raw.items() if k not in own}
    not_here = NOT_HERE if section == "schedule" else {}
    valid = sorted(own | {p.key for p in optim.hparams_of(section, config.name)} - set(not_here))
    for key in given:
        if key in not_here or not (key in valid or optim.takers(section, key)):
            why = f"comes from {not_here[key]}" if key in not_here else "unknown key"
            raise ConfigError(f"{section}.{key}: {why}; expected some of {', '.join(valid)}")
    linked = _linked(cfg, section, config.name, given)
    with named(section):
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


def is_legacy(section: str, node: Mapping) -> bool:
    """Whether `node` is a resolved section written by an earlier distnn (see LEGACY)."""
    return LEGACY[section] <= set(node)
