"""`train.init_from`: start a run from another run's parameters (transfer learning).

Parameters and BatchNorm statistics load by layer name where every array of the layer is in the
checkpoint with the same shape; a layer that `train.reset` names, or whose arrays are missing or
shaped differently (a new head of 5 classes instead of 10), keeps the config's initialisation.
The optimizer and the schedule start fresh. Names given with `name:` are stable; a positional
name (`conv3`, the default) loads only where the layers before it have the same kinds as in the
checkpoint, so that inserting a layer never silently shifts which weights load where.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from distnn.config import ConfigError
from distnn.nn import Sequential
from distnn.storage import shown
from distnn.train.checkpoint import Snapshot


@dataclass
class Transfer:
    """What init_from did, layer by layer (names in model order)."""

    loaded: list[str] = field(default_factory=list)
    reset: list[str] = field(default_factory=list)
    new: list[str] = field(default_factory=list)  # "name (why)"

    def line(self, path: Path) -> str:
        parts = [f"loaded {', '.join(self.loaded) or 'nothing'}"]
        if self.reset:
            parts.append(f"reset {', '.join(self.reset)} (train.reset)")
        if self.new:
            parts.append(f"new {', '.join(self.new)}")
        return f"init_from {shown(path)}: " + "; ".join(parts)


def _names(specs: list) -> list[str]:
    """Each layer's name in a model spec: its `name:`, else the positional kind + index."""
    return [spec.get("name", f"{spec['type']}{i}") for i, spec in enumerate(specs)]


def _check_position(model: Sequential, i: int, theirs: list, path: Path) -> None:
    """A layer with a positional name loads only where the layers up to it have the same kinds
    in the checkpoint (ConfigError otherwise: the name would silently point elsewhere)."""
    mine = [spec["type"] for spec in model.specs[:i + 1]]
    kinds = [spec.get("type") for spec in theirs[:i + 1]]
    names = _names(theirs)
    name = model.layers[i].name
    at = names.index(name)
    if at == i and kinds == mine and "name" not in theirs[i]:
        return
    first = next((j for j, (a, b) in enumerate(zip(mine, kinds, strict=False)) if a != b), i)
    there = f"{kinds[first]}" if first < len(kinds) else "nothing"
    raise ConfigError(f"train.init_from: {shown(path)}: layer {name!r} has a positional name, but "
                      f"in the checkpoint {name!r} is layer {at} and model.{first} is "
                      f"{there} there, {mine[first]} here (a layer inserted or removed?); "
                      f"give the layers `name:` keys to say which weights load where, or list "
                      f"{name} in train.reset")


def init_from(model: Sequential, snap: Snapshot, reset: tuple[str, ...], path: Path) -> Transfer:
    """Copy the checkpoint's arrays into `model` layer by layer (see the module doc); returns
    what was loaded, reset and left new. The same on every rank given the same snapshot."""
    theirs = list(snap.model_spec)
    known = set(_names(theirs))
    out = Transfer()
    for i, layer in enumerate(model.layers):
        arrays = {**{f"{layer.name}.{k}": v for k, v in layer.p.items()},
                  **{f"{layer.name}.{k}": v for k, v in layer.s.items()}}
        if not arrays:
            continue
        if layer.name in reset:
            out.reset.append(layer.name)
            continue
        if layer.name not in known:
            out.new.append(f"{layer.name} (not in the checkpoint)")
            continue
        if "name" not in model.specs[i]:
            _check_position(model, i, theirs, path)
        missing = [k for k in arrays if k not in snap.model]
        if missing:
            out.new.append(f"{layer.name} (no {', '.join(missing)} there)")
            continue
        bad = [(k, snap.model[k].shape, a.shape) for k, a in arrays.items()
               if np.shape(snap.model[k]) != a.shape]
        if bad:
            k, there, here = bad[0]
            out.new.append(f"{layer.name} ({k.split('.', 1)[1]} {tuple(here)} here, "
                           f"{tuple(there)} there)")
            continue
        for k, a in arrays.items():
            a[...] = snap.model[k]
        out.loaded.append(layer.name)
    return out
