"""distnn summary: each layer of a config's model with its output shape, parameter count,
activation values and memory, and forward FLOPs, per image; then the totals.

The model is built as training builds it (distnn.nn.Sequential on the config's `model:` specs,
float32), on the per-image shape of the config's dataset (from the dataset catalog, or from the
header of a .h5 file: no image is read), or on --input-shape (H,W,C for images, D for vectors).

FLOPs are counted per image, forward pass. A multiply-add is 2 FLOPs. Conv:
2*K*K*Cin*Cout*Hout*Wout, plus one add per output element for the bias. Dense: 2*in*out + out.
Elementwise layers (relu, leaky_relu, prelu, elu, tanh, sigmoid, dropout, batchnorm): one FLOP per
output element; for batchnorm that one FLOP is the per-channel scale-and-shift (x * a + b) that
the normalisation, gamma and beta fold into, counted as one operation, and the batch statistics
and running averages of training are not counted. A ReLU fused into the conv or dense layer
before it keeps its own row and its one FLOP per element. Pooling (maxpool, avgpool,
globalavgpool) and maxout: one FLOP per window element per output element. Flatten: 0.

Activation memory is the float32 bytes of each layer's output. Flatten (a view of its input) and
a fused ReLU (applied in the previous layer's output buffer) hold none of their own; the input
images are not counted.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from typing import Any

from distnn.console import err, one_line
from distnn.exit_codes import ExitCode

FLOAT32_BYTES = 4
CONVENTION = ("FLOPs per image, forward: multiply-add = 2; conv 2*K*K*Cin*Cout*Ho*Wo + "
              "Cout*Ho*Wo (bias); dense 2*in*out + out; activations, dropout, batchnorm "
              "(scale-and-shift) 1 per output; pooling, maxout 1 per window element per output; "
              "flatten 0")
MEMORY_NOTE = ("activation memory: float32 outputs of each layer; flatten (a view) and fused "
               "ReLUs (in place) hold none; input images not counted")
SHAPE_EXPECTED = "expected H,W,C or D positive integers"


class BadInput(Exception):
    """A value given on the command line (or named by the config) that cannot be summarised."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML file or bundled config name (quickstart, mnist, "
                                       "fashion_mnist, cifar10)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE",
                        help="override a config key, e.g. --set data.dataset=cifar10 "
                             "(repeatable)")
    parser.add_argument("--input-shape", default=None, metavar="H,W,C|D",
                        help="per-image input shape (default: the config's dataset's)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (layers and totals) instead of a table")


def parse_input_shape(text: str) -> tuple[int, ...]:
    """'32,32,3' -> (32, 32, 3); '3' -> (3,). BadInput for anything else."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(re.fullmatch(r"\+?[0-9]+", p) for p in parts):
        raise BadInput(f"--input-shape: {text!r} is not 1 or 3 comma-separated integers; "
                       f"{SHAPE_EXPECTED}")
    shape = tuple(int(p) for p in parts)
    if min(shape) < 1:
        raise BadInput(f"--input-shape: {text!r} has a size below 1; {SHAPE_EXPECTED}")
    return shape


def _h5_header(path: str) -> tuple[tuple[int, ...], int | None]:
    """(image shape, classes) from a distnn HDF5 file's train split, without reading images."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            images = fh.get("train/images")
            if not isinstance(images, h5py.Dataset) or images.ndim != 4:
                raise BadInput(f"data.dataset: {path} holds no train/images of shape "
                               f"(n, H, W, C); give the shape with --input-shape")
            names = fh.attrs.get("class_names")
            return (tuple(int(d) for d in images.shape[1:]),
                    None if names is None else len(names))
    except OSError as exc:
        raise BadInput(f"data.dataset: cannot open {path}: {exc}; expected a distnn HDF5 "
                       f"file, or give the shape with --input-shape") from None


def dataset_shape(dataset: str) -> tuple[tuple[int, ...], int | None]:
    """(per-image shape, number of classes or None) of a config's data.dataset."""
    from distnn.data import catalog

    spec = catalog.lookup(dataset)
    if spec is not None:
        return tuple(int(d) for d in spec.image_shape), len(spec.class_names)
    if dataset.lower().endswith((".h5", ".hdf5")):
        return _h5_header(dataset)
    raise BadInput(f"data.dataset: {dataset!r} is not a catalog dataset; expected one of "
                   f"{', '.join(catalog.SPECS)} or a .h5 file, or give --input-shape")


def layer_flops(layer: Any) -> int:
    """Forward FLOPs per image of one built layer, by the convention in the module docstring."""
    from distnn import nn

    in_shape: tuple[int, ...] = layer.in_shape  # the layer is built: shapes are set
    out = math.prod(layer.out_shape)
    if isinstance(layer, nn.Conv2D):
        # The built layer's own geometry: kernel, input channels, filters, output size.
        macs = layer.kernel * layer.kernel * layer.channels * layer.filters * layer.ho * layer.wo
        return 2 * macs + layer.filters * layer.ho * layer.wo
    if isinstance(layer, nn.Dense):
        return 2 * in_shape[0] * layer.units + layer.units
    if isinstance(layer, (nn.ReLU, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.Tanh, nn.Sigmoid,
                          nn.Dropout, nn.BatchNorm)):
        return out
    if isinstance(layer, (nn.MaxPool2D, nn.AvgPool2D)):
        return layer.size * layer.size * out
    if isinstance(layer, nn.GlobalAvgPool):
        return in_shape[0] * in_shape[1] * out
    if isinstance(layer, nn.Maxout):
        return layer.k * out
    if isinstance(layer, nn.Flatten):
        return 0
    raise TypeError(f"{layer.name}: no FLOP rule for layer kind {layer.kind!r}")


def _holds_output(layer: Any) -> bool:
    """Whether the layer's forward pass writes a new array (a view or in-place pass does not)."""
    from distnn.nn import Flatten, ReLU

    if isinstance(layer, Flatten):
        return False
    return not (isinstance(layer, ReLU) and layer.fused)


def layer_rows(model: Any) -> list[dict[str, Any]]:
    """One dict per layer of a built Sequential: what the table and the JSON show."""
    rows = []
    for layer in model.layers:
        values = math.prod(layer.out_shape)
        fused = bool(getattr(layer, "fused", False))
        row: dict[str, Any] = {
            "name": layer.name, "type": layer.kind,
            "description": layer.describe() + (" (fused)" if fused else ""),
            "output_shape": list(layer.out_shape),
            "params": int(sum(p.size for p in layer.p.values())),
            "activations": values,
            "activation_bytes": FLOAT32_BYTES * values if _holds_output(layer) else 0,
            "flops": layer_flops(layer),
        }
        if hasattr(layer, "algorithm"):
            row["algorithm"] = layer.algorithm
        rows.append(row)
    return rows


def build_report(args: argparse.Namespace) -> dict[str, Any]:
    """The summary of the model `args` names, as plain data. Raises BadInput or ConfigError."""
    import numpy as np

    from distnn.config import load_config, model_errors
    from distnn.nn import Sequential

    given = None if args.input_shape is None else parse_input_shape(args.input_shape)
    cfg = load_config(args.config, args.overrides)
    notes = []
    if given is None:
        shape, classes = dataset_shape(cfg.data.dataset)
        source = f"data.dataset {cfg.data.dataset}"
        d = cfg.data
        if d.normalize and d.preprocess == "pca_whiten":  # the model sees (1, 1, k) vectors
            values = math.prod(shape)
            k = d.pca_components or values
            if k > values:
                notes.append(f"data.pca_components {k} exceeds the {values} values of an "
                             f"image {tuple(shape)}: training would refuse it")
            shape, source = (1, 1, k), f"{source} after data.preprocess pca_whiten"
    else:
        shape, classes, source = given, None, "--input-shape"
    with model_errors(f" (on inputs of shape {shape})"):
        model = Sequential(list(cfg.model), shape, seed=cfg.seed, dtype=np.float32)
    rows = layer_rows(model)
    if classes is not None and model.output_shape != (classes,):
        notes.append(f"the model outputs {model.output_shape} per image and {cfg.data.dataset} "
                     f"has {classes} classes: training would refuse it (expected ({classes},))")
    return {
        "config": cfg.name, "input_shape": list(shape), "input_from": source,
        "output_shape": list(model.output_shape), "layers": rows,
        "totals": {
            "params": int(model.num_params),
            "param_bytes": FLOAT32_BYTES * int(model.num_params),
            "activations": sum(r["activations"] for r in rows if r["activation_bytes"]),
            "activation_bytes": sum(r["activation_bytes"] for r in rows),
            "flops": sum(r["flops"] for r in rows),
        },
        "convention": CONVENTION, "memory": MEMORY_NOTE, "notes": notes,
    }


def human_bytes(n: int) -> str:
    """16 -> '16 B', 3072 -> '3.0 KiB', 5 * 2**20 -> '5.0 MiB'."""
    if n < 1024:
        return f"{n} B"
    value = n / 1024
    for unit in ("KiB", "MiB"):
        if value < 1024:
            return f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GiB"


def format_table(report: dict[str, Any]) -> str:
    """The report as a fixed-width table with its totals and footer lines."""
    def line(name: str, desc: str, shape: str, params: str, values: str, memory: str,
             flops: str) -> str:
        return (f"{name:<15} {desc:<31} {shape:<15} {params:>10} {values:>12} {memory:>11} "
                f"{flops:>16}").rstrip()

    shape_in = str(tuple(report["input_shape"]))
    values_in = math.prod(report["input_shape"])
    out = [f"model of config {report['config']} on inputs of shape {shape_in} "
           f"(from {report['input_from']})",
           line("layer", "description", "output", "params", "values", "memory", "FLOPs"),
           line("input", "", shape_in, "0", f"{values_in:,}", "-", "-")]
    for r in report["layers"]:
        memory = human_bytes(r["activation_bytes"]) if r["activation_bytes"] else "-"
        out.append(line(r["name"], r["description"], str(tuple(r["output_shape"])),
                        f"{r['params']:,}", f"{r['activations']:,}", memory, f"{r['flops']:,}"))
    t = report["totals"]
    out += [f"total parameters: {t['params']:,} ({human_bytes(t['param_bytes'])} float32)",
            f"activation memory per image (forward): {human_bytes(t['activation_bytes'])} "
            f"({t['activations']:,} float32 values)",
            f"FLOPs per image (forward): {t['flops']:,} ({t['flops'] / 1e6:.2f} MFLOP)",
            report["convention"], report["memory"]]
    out += [f"note: {n}" for n in report["notes"]]
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from distnn.config import ConfigError
    from distnn.nn import ShapeError, SpecError

    try:
        report = build_report(args)
    except (BadInput, ConfigError, SpecError, ShapeError) as exc:
        err(f"distnn summary: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    print(json.dumps(report) if args.json else format_table(report))
    return ExitCode.OK
