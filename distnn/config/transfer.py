"""The transfer keys checked against the model's layer names when a config loads:
train.freeze / freeze_until / reset / init_from and optimizer.lr_mult (each bad value is a
ConfigError naming the key, the value and the layers there are)."""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path

from distnn import nn
from distnn.config.schema import Config, ConfigError
from distnn.nn.base import Layer
from distnn.storage import is_url


def has_parameters(layer: Layer) -> bool:
    """Whether a layer of this kind has parameters (known before its shapes are)."""
    return type(layer).param_shapes is not Layer.param_shapes


def check_transfer(cfg: Config, layers: list[Layer]) -> None:
    """The transfer keys of `cfg` against its model's `layers` (nn.build_layers of cfg.model,
    [] for none): ConfigError if any is wrong."""
    t = cfg.train
    names = [layer.name for layer in layers]
    with_params = [layer.name for layer in layers if has_parameters(layer)]
    listed = ", ".join(with_params)
    for key, values in (("train.freeze", t.freeze), ("train.reset", t.reset)):
        for name in values:
            if name not in names:
                raise ConfigError(f"{key}: {name!r} is not a layer of the model; expected "
                                  f"layer names with parameters: {listed}")
            if name not in with_params:
                raise ConfigError(f"{key}: {name!r} has no parameters; expected layer names "
                                  f"with parameters: {listed}")
    if t.freeze and t.freeze_until is not None:
        raise ConfigError(f"train.freeze_until: {t.freeze_until!r} beside train.freeze "
                          f"{list(t.freeze)}; expected one of them")
    if t.freeze_until is not None and t.freeze_until not in names:
        raise ConfigError(f"train.freeze_until: {t.freeze_until!r} is not a layer of the "
                          f"model; expected one of {', '.join(names)}")
    if t.reset and not t.init_from:
        raise ConfigError(f"train.reset: {list(t.reset)} without train.init_from; expected "
                          f"train.init_from: CHECKPOINT (reset names layers not to load)")
    if t.init_from is not None and not t.init_from.strip():
        raise ConfigError("train.init_from: '', expected the path of a distnn checkpoint")
    frozen = frozen_names(cfg, layers)
    if layers and set(with_params) <= set(frozen):
        raise ConfigError(f"train.freeze: every layer with parameters is frozen "
                          f"({', '.join(frozen)}); expected at least one to train")
    for glob in cfg.optimizer.lr_mult:
        if not any(fnmatch.fnmatchcase(name, glob) for name in with_params):
            raise ConfigError(f"optimizer.lr_mult: {glob!r} matches no layer with parameters; "
                              f"expected a glob on the names {listed}")


def frozen_names(cfg: Config, layers: list[Layer] | None = None) -> tuple[str, ...]:
    """The layers with parameters that `cfg` freezes: train.freeze, or every one up to and
    including train.freeze_until."""
    t = cfg.train
    if t.freeze_until is None:
        return tuple(t.freeze)
    layers = nn.build_layers(cfg.model) if layers is None else layers
    names = [layer.name for layer in layers]
    upto = layers[:names.index(t.freeze_until) + 1]
    return tuple(layer.name for layer in upto if has_parameters(layer))


def with_absolute_paths(cfg: Config) -> Config:
    """`cfg` with train.init_from made absolute against the current directory: the path the
    user gave is relative to where the command runs, not to where a worker does."""
    if not cfg.train.init_from or is_url(cfg.train.init_from):  # a URL is the same anywhere
        return cfg
    start = str(Path(cfg.train.init_from).expanduser().absolute())
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, init_from=start))
