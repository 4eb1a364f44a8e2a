"""Loading and saving configs: YAML files or bundled names, `--set key=value` overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from distnn import optim
from distnn.config.schema import SECTIONS, Config, ConfigError, build, mapping
from distnn.config.sections import drop_foreign, is_legacy, named, schedule_spec, section_config


def from_dict(raw: dict) -> Config:
    """A validated Config from nested plain data (missing keys take their defaults).

    An optimizer or schedule key that only another rule takes (`mu` with adam) is an error,
    except in a section written by an earlier distnn (sections.LEGACY), which listed the keys of
    every rule: there they are dropped."""
    raw = dict(mapping(raw or {}, ""))
    sections = {s: dict(mapping(raw.pop(s, {}), s)) for s in SECTIONS}
    cfg = build(Config, raw, "")
    for section, cls in SECTIONS.items():
        if is_legacy(section, sections[section]):
            drop_foreign(section, sections[section], keep=set())
        built = section_config(section, cls, sections[section], cfg)
        cfg = dataclasses.replace(cfg, **{section: built})
    with named("optimizer"):  # what the constructors check across keys (min_lr <= base_lr)
        optim.make_optimizer(cfg.optimizer.name, **cfg.optimizer.params)
    with named("schedule"):
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
            drop_foreign(section, raw[section], keep=given[section])
    return raw


def bundled_config_path(name: str) -> Path:
    return Path(__file__).parents[1] / "configs" / f"{name}.yaml"


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
