"""The layer registry: every layer kind by its spec `type`, and building unbuilt layers from
specs (type, keys, names and size bounds checked; shapes are checked when a Sequential builds
them). Sequential (model.py) imports it; distnn.config checks specs with build_layers."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Sequence
from typing import Any

from distnn.nn.activations import ELU, LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Tanh
from distnn.nn.base import Layer
from distnn.nn.conv import Conv2D
from distnn.nn.dense import Dense, Flatten
from distnn.nn.errors import SpecError
from distnn.nn.pool import AvgPool2D, GlobalAvgPool, MaxPool2D
from distnn.nn.regularize import BatchNorm, Dropout

LAYERS: dict[str, type[Layer]] = {
    cls.kind: cls
    for cls in (Conv2D, MaxPool2D, AvgPool2D, GlobalAvgPool, Dense, Flatten, ReLU, LeakyReLU,
                PReLU, ELU, Tanh, Sigmoid, Maxout, Dropout, BatchNorm)
}
NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")  # a layer name: a key in checkpoints
# Elements of all parameters, or of one layer's per-sample output: 1 GiB of float32. A sanity
# bound that refuses absurd specs (units: 1e11) with a SpecError instead of a MemoryError.
MAX_ELEMENTS = 2**28


def build_layer(spec: dict, index: int) -> Layer:
    """One layer from a spec like {"type": "conv", "filters": 10, "kernel": 3, "pad": 1}."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise SpecError(f"layer {index}: spec {spec!r}, expected a dict with a 'type' key")
    kind = spec["type"]
    cls = LAYERS.get(kind)
    if cls is None:
        raise SpecError(
            f"layer {index}: unknown type {kind!r}; expected one of {', '.join(sorted(LAYERS))}"
        )
    allowed = set(inspect.signature(cls.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise SpecError(
            f"layer {index} ({kind}): unknown key(s) {unknown}; expected some of {sorted(allowed)}"
        )
    kwargs.setdefault("name", f"{kind}{index}")
    if not isinstance(kwargs["name"], str) or not NAME.fullmatch(kwargs["name"]):
        raise SpecError(f"layer {index} ({kind}): name={kwargs['name']!r}, expected letters, "
                        f"digits, _ or - (at most 64, not starting with a digit or -)")
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a missing required argument such as filters/units
        raise SpecError(f"layer {index} ({kind}): {exc}") from None


def build_layers(specs: Sequence[dict[str, Any]]) -> list[Layer]:
    """The unbuilt layers of a model spec: everything that can be checked without the input
    shape (a non-empty list, each layer's type, keys and values, distinct names)."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise SpecError(f"model: layers={specs!r}, expected a non-empty list of layer specs")
    layers = [build_layer(spec, i) for i, spec in enumerate(specs)]
    seen: dict[str, int] = {}
    for i, layer in enumerate(layers):
        if layer.name in seen:
            raise SpecError(f"layer {i}: name {layer.name!r} is already the name of layer "
                            f"{seen[layer.name]}; expected distinct layer names")
        seen[layer.name] = i
    return layers


def check_sizes(layers: Sequence[Layer]) -> None:
    """SpecError when a built layer's output or the parameters exceed MAX_ELEMENTS."""
    total = 0
    for layer in layers:
        size = math.prod(layer.out_shape or ())
        total += sum(math.prod(s) for s in layer.param_shapes().values())
        if size > MAX_ELEMENTS:
            raise SpecError(f"{layer.name}: output shape {layer.out_shape} holds {size} values "
                            f"per sample, expected at most {MAX_ELEMENTS}")
        if total > MAX_ELEMENTS:
            raise SpecError(f"{layer.name}: {total} parameters up to this layer, expected at "
                            f"most {MAX_ELEMENTS}")
