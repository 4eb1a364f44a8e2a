"""Loading and saving configs: YAML files or bundled names, `--set key=value` overrides.

YAML is read by a SafeLoader (no Python tags) with bounds: a file of at most MAX_CONFIG_BYTES,
and aliases that expand to at most MAX_NODES nodes (a few hundred bytes of nested aliases
otherwise expand to billions of nodes wherever the value is walked or printed). Every failure is
a one-line ConfigError naming the file (or the --set value), the line and column, and why.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from distnn import nn, optim
from distnn.config.schema import SECTIONS, Config, ConfigError, DataConfig, build, mapping
from distnn.config.sections import drop_foreign, is_legacy, named, schedule_spec, section_config
from distnn.config.transfer import check_transfer

MAX_CONFIG_BYTES = 1 << 20
MAX_NODES = 100_000  # YAML nodes of a document with every alias expanded


class BoundedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a document whose aliases expand beyond MAX_NODES nodes, or
    refer to a node that contains them (a recursive structure)."""

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {})
        return node

    def construct_mapping(self, node, deep=False):
        """A key given twice in one mapping is an error (YAML keeps the last one silently)."""
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                if key is not None and key in seen:
                    raise ConfigError(f"line {key_node.start_mark.line + 1}, column "
                                      f"{key_node.start_mark.column + 1}: key {key!r} is given "
                                      f"twice in one mapping; expected each key once")
                seen.add(key)
        return super().construct_mapping(node, deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int | None]) -> int:
    """Nodes under `node` with every alias expanded; sizes memoises shared (aliased) nodes."""
    key = id(node)
    if key in sizes:
        known = sizes[key]
        if known is None:
            raise ConfigError(f"line {node.start_mark.line + 1}: a YAML alias refers to a node "
                              f"that contains it; expected no recursive aliases")
        return known
    sizes[key] = None  # in progress
    total = 1
    if isinstance(node, yaml.SequenceNode):
        total += sum(_expanded_size(child, sizes) for child in node.value)
    elif isinstance(node, yaml.MappingNode):
        total += sum(_expanded_size(k, sizes) + _expanded_size(v, sizes) for k, v in node.value)
    if total > MAX_NODES:
        raise ConfigError(f"line {node.start_mark.line + 1}: YAML aliases expand to more than "
                          f"{MAX_NODES} nodes; expected a plain config (an alias bomb?)")
    sizes[key] = total
    return total


def parse_yaml(text: str | bytes, where: str):
    """The data of one YAML document (None if empty), read safely and within MAX_NODES.
    Raises ConfigError naming `where`, the line and column, and the parser's reason."""
    try:
        return yaml.load(text, Loader=BoundedLoader)  # a SafeLoader: no Python tags
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(f"{where}: {_yaml_reason(exc)}") from None
    except yaml.reader.ReaderError as exc:
        raise ConfigError(f"{where}: byte {exc.position}: not UTF-8 or UTF-16 text "
                          f"({exc.encoding}: {exc.reason})") from None
    except RecursionError:
        raise ConfigError(f"{where}: YAML nested too deeply; expected a plain config") from None


def _yaml_reason(exc: yaml.MarkedYAMLError) -> str:
    """'line L, column C: invalid YAML: <context (where it began)>; <problem>'."""
    def at(mark) -> str:
        return f"line {mark.line + 1}, column {mark.column + 1}"

    mark = exc.problem_mark or exc.context_mark
    context = exc.context or ""
    if context and exc.context_mark and exc.context_mark is not mark:
        context += f" (from {at(exc.context_mark)})"
    reason = "; ".join(r for r in (context, exc.problem or "") if r)
    if isinstance(exc, yaml.constructor.ConstructorError):
        reason += "; expected plain YAML data (no !!python or other tags)"
    return f"{at(mark) + ': ' if mark else ''}invalid YAML: {reason}"


def read_config_file(path: Path) -> dict:
    """The raw data of a YAML config file of at most MAX_CONFIG_BYTES."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_CONFIG_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"config {path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_CONFIG_BYTES:
        size = f"{path.stat().st_size}" if path.is_file() else f"more than {MAX_CONFIG_BYTES}"
        raise ConfigError(f"config {path}: {size} bytes, expected a YAML file of at most "
                          f"{MAX_CONFIG_BYTES} bytes")
    return parse_yaml(data, f"config {path}") or {}


@contextmanager
def model_errors(context: str = "") -> Iterator[None]:
    """distnn.nn's SpecError/ShapeError about the `model:` key as a ConfigError naming it."""
    try:
        yield
    except (nn.SpecError, nn.ShapeError) as exc:
        raise ConfigError(f"model: {exc}{context}") from None


MAX_GROUPS = 4096  # train.groups: each group costs a gradient row and metric slots per step


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
        try:
            optim.make_schedule(schedule_spec(cfg))
        except ValueError as exc:
            raise _scaled_context(exc, cfg) from None
    layers = []
    if cfg.model:  # all but the shapes, which need the data (checked when the model is built)
        with model_errors():
            layers = nn.build_layers(cfg.model)
    check_transfer(cfg, layers)
    check_folds(cfg.data)
    if not cfg.data.normalize and cfg.data.preprocess != "channel_mean_std":
        raise ConfigError(f"data.preprocess: {cfg.data.preprocess} with data.normalize: false; "
                          f"expected data.normalize: true (it turns preprocessing on), or "
                          f"preprocess channel_mean_std")
    if cfg.data.pca_components and cfg.data.preprocess != "pca_whiten":
        raise ConfigError(f"data.pca_components: {cfg.data.pca_components} with data.preprocess "
                          f"{cfg.data.preprocess}; expected 0 (the key sets pca_whiten's "
                          f"components)")
    if cfg.optimizer.name in optim.FULL_BATCH:
        check_full_batch(cfg, layers)
    t = cfg.train
    if t.groups > MAX_GROUPS:
        raise ConfigError(f"train.groups: {t.groups}, expected at most {MAX_GROUPS}")
    if t.invariant and t.grad_accum > t.groups:
        raise ConfigError(f"train.grad_accum: {t.grad_accum} micro-batches of train.groups "
                          f"{t.groups} groups; expected grad_accum <= groups (each micro-batch "
                          f"is a run of whole groups)")
    if t.invariant and cfg.comm.compress != "none":
        raise ConfigError(f"comm.compress: {cfg.comm.compress} with train.invariant: true; "
                          f"expected compress none (16-bit gradients with per-rank error "
                          f"feedback are not the same on every number of ranks)")
    return cfg


def check_folds(d: DataConfig) -> None:
    """The cross-validation keys together: data.folds 0 (off) or >= 2, data.fold one of its
    folds, and not beside a data.val_size hold-out (two validation sets)."""
    if d.folds == 1:
        raise ConfigError("data.folds: 1, expected 0 (off) or >= 2 (folds of the training "
                          "split, one of them the validation set)")
    if d.folds >= 2 and d.fold >= d.folds:
        raise ConfigError(f"data.fold: {d.fold}, expected 0 to {d.folds - 1} (one of the "
                          f"data.folds {d.folds} folds)")
    if d.folds == 0 and d.fold > 0:
        raise ConfigError(f"data.fold: {d.fold} with data.folds 0 (off), expected 0 or "
                          f"data.folds >= 2")
    if d.validate_on == "test" and (d.val_size > 0 or d.folds >= 2):
        what = f"data.val_size {d.val_size}" if d.val_size else f"data.folds {d.folds}"
        raise ConfigError(f"data.validate_on: test with {what}, expected one validation set "
                          f"(validate_on holdout with val_size/folds, or validate_on test alone)")
    if d.folds >= 2 and d.val_size > 0:
        raise ConfigError(f"data.val_size: {d.val_size} with data.folds {d.folds}, expected "
                          f"one of them (val_size 0 with folds, or folds 0 with val_size)")


def check_full_batch(cfg: Config, layers) -> None:
    """optimizer lbfgs: the full-batch objective must be deterministic ("turn off every source
    of noise"), and the line search picks every step (no schedule, no multipliers)."""
    why = "lbfgs needs a deterministic full-batch objective"
    for layer in layers:
        if layer.kind == "dropout" and layer.rate > 0:
            raise ConfigError(f"model: dropout layer {layer.name!r} (rate {layer.rate:g}) with "
                              f"optimizer lbfgs; expected no dropout ({why})")
        if layer.kind == "batchnorm":
            raise ConfigError(f"model: batchnorm layer {layer.name!r} with optimizer lbfgs; "
                              f"expected none ({why}: batch statistics depend on how the "
                              f"full batch is cut)")
    checks = [("data.augment", cfg.data.augment, "false"),
              ("comm.compress", cfg.comm.compress != "none", "none"),
              ("comm.overlap", cfg.comm.overlap, "false"),
              ("train.grad_accum", cfg.train.grad_accum != 1, "1"),
              ("train.clip_grad_norm", cfg.train.clip_grad_norm > 0, "0"),
              ("optimizer.lr_mult", bool(cfg.optimizer.lr_mult), "none"),
              ("schedule.name", cfg.schedule.name != "constant", "constant")]
    for key, bad, expected in checks:
        if bad:
            value = functools.reduce(getattr, key.split("."), cfg)
            raise ConfigError(f"{key}: {value!r} with optimizer lbfgs; expected {expected} "
                              f"({why}; its line search picks every step)")


def _scaled_context(exc: ValueError, cfg: Config) -> ValueError:
    """Under schedule.scale_lr the schedule checks the scaled base_lr, a number the user never
    wrote: say how it was obtained."""
    s = cfg.schedule
    if not s.scale_lr:
        return exc
    scaled = optim.scaled_lr(s.base_lr, cfg.train.global_batch, s.reference_batch)
    note = (f" (schedule.scale_lr: base_lr {s.base_lr:g} x train.global_batch "
            f"{cfg.train.global_batch} / reference_batch {s.reference_batch} = {scaled:g})")
    if isinstance(exc, optim.BadValue):
        return optim.BadValue(f"{exc}{note}", exc.key, exc.detail + note)
    return ValueError(f"{exc}{note}")


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
    return key.strip().split("."), parse_yaml(value, f"--set {text!r}")


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `--set` overrides to nested plain data (validated later by from_dict).

    `--set optimizer.name=adam` (or schedule.name) also drops the file's keys that the new rule
    does not take but the one it replaces did (`mu`); keys set with --set are always kept."""
    given: dict[str, set[str]] = {}
    mapping(raw, "")
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
    cfg = from_dict(apply_overrides(read_config_file(path), overrides or []))
    if not cfg.model:
        raise ConfigError("model: no layers; expected a non-empty list of layer specs, e.g. "
                          "[{type: flatten}, {type: dense, units: 10}]")
    return cfg


def check_world_size(cfg: Config, world_size: int) -> None:
    """What only the number of ranks decides: the invariant step shares train.groups groups
    among the ranks, so there must be at least as many; the plain step gives each rank an equal
    share of every global batch, so train.global_batch must be a multiple of it."""
    batch = cfg.train.global_batch
    if cfg.train.invariant:
        if world_size > cfg.train.groups:
            raise ConfigError(f"train.groups: {cfg.train.groups} groups cannot be shared by "
                              f"{world_size} ranks; expected train.groups >= {world_size} (the "
                              f"same value on every run that must compute the same numbers)")
        return
    if batch % world_size:
        lower, upper = batch - batch % world_size, batch + world_size - batch % world_size
        nearest = f"{lower} or {upper}" if lower else f"{upper}"
        raise ConfigError(f"train.global_batch: {batch} does not split evenly over {world_size} "
                          f"ranks; expected a multiple of {world_size} (e.g. {nearest})")


def save_config(cfg: Config, path: Path) -> None:
    """Write `cfg` as YAML to `path` atomically (a temp file beside it, then renamed over it):
    a failure (disk full) leaves the old file, never a truncated one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w") as fh:
            yaml.safe_dump(to_dict(cfg), fh, sort_keys=False)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
