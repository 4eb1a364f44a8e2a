"""`distnn export CKPT --onnx OUT.onnx [--check]`: the trained network of a checkpoint as an ONNX
graph, for inference outside distnn (ONNX Runtime, a browser, a phone).

The graph takes images as float32 (N, C, H, W) holding raw pixel values 0..255 and outputs
`scores` and `probabilities` (N, K); the checkpoint's normalisation is part of the graph (see
distnn/export/onnx_graph.py). The input shape comes from the checkpoint (or --input-shape, or
its dataset for files written before checkpoints recorded it). The file appears complete or
not at all (a temporary file renamed into place); an existing file is replaced only with
--overwrite. --check runs the graph in ONNX Runtime on up to 256 images of the checkpoint's test
split (random images when the dataset is not at hand) and compares its scores with distnn's:
exit 1 when they differ by more than 1e-5 (relative to max(1, |score|)).
Needs the optional packages onnx and onnxruntime: pip install 'distnn[onnx]'.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from distnn import console
from distnn.comm import create_communicator
from distnn.console import one_line
from distnn.data import DataError, Dataset, get_dataset
from distnn.data.preprocess import image_shape_of
from distnn.data.transforms import value_scale
from distnn.exit_codes import ExitCode
from distnn.export.onnx_graph import TOLERANCE, ExportError, check, input_dims, to_onnx
from distnn.nn import Sequential
from distnn.train.checkpoint import Snapshot, replace_atomically
from distnn.train.errors import CheckpointError
from distnn.train.evaluate_checkpoint import network_shape, read_saved, saved_network

HELP = "the trained network of a checkpoint as an ONNX graph, checked by ONNX Runtime"
CHECK_IMAGES = 256  # images --check runs through both


def register_export_command(sub: argparse._SubParsersAction) -> None:
    """Add `export` to the `distnn` subcommands."""
    p = sub.add_parser("export", help=HELP, description=__doc__)
    add_arguments(p)
    p.set_defaults(func=main)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a distnn checkpoint (.h5)")
    p.add_argument("--onnx", required=True, help="the ONNX file to write (.onnx)")
    p.add_argument("--check", action="store_true",
                   help="run the graph in ONNX Runtime and compare its scores with distnn's")
    p.add_argument("--opset", type=int, default=17, help="the ONNX opset version (default 17)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --onnx file")
    p.add_argument("--input-shape", default=None, metavar="H,W,C",
                   help="the per-image input shape, for checkpoints that do not record it "
                        "(default: the checkpoint's, else its dataset's)")
    p.add_argument("--data-dir", default=None, help="where the checkpoint's dataset is")


def parse_shape(text: str) -> tuple[int, ...]:
    """"28,28,1" -> (28, 28, 1); ValueError unless 1 or 3 positive integers."""
    parts = tuple(int(v) for v in text.split(","))
    if len(parts) not in (1, 3) or min(parts) < 1:
        raise ValueError(text)
    return parts


def main(args: argparse.Namespace) -> int:
    out = Path(args.onnx)
    problem, shape = None, None
    if out.is_dir():
        problem = f"--onnx {out}: is a folder; expected a file name"
    elif out.exists() and not args.overwrite:
        problem = f"--onnx {out}: exists; expected a new file (or --overwrite)"
    if args.input_shape is not None and problem is None:
        try:
            shape = parse_shape(args.input_shape)
        except ValueError:
            problem = f"--input-shape {args.input_shape}: expected H,W,C (or D), integers >= 1"
    if problem is None:
        problem = missing_packages(args.check)
    if problem:
        console.err(f"distnn export: {problem}")
        return ExitCode.BAD_INPUT
    try:
        model, snap, names, data = load_network(Path(args.checkpoint), shape, args.data_dir,
                                                args.check)
        scale = value_scale(data.read(np.arange(1)).dtype) if data and len(data) else 255.0
        proto = to_onnx(model, snap.normalization, opset=args.opset, value_scale=scale,
                        class_names=names)
    except (CheckpointError, ExportError, DataError) as exc:
        console.err(f"distnn export: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    try:
        replace_atomically(out, proto.SerializeToString())
    except OSError as exc:  # a read-only folder, a full disk: nothing is left behind
        console.err(f"distnn export: --onnx {out}: cannot be written: {one_line(exc)}")
        return ExitCode.WRITE_FAILED
    values = "0..255" if scale == 255 else "float32 codes as stored"
    image_shape = image_shape_of(snap.normalization, model.input_shape)
    dims = ", ".join(str(d) for d in input_dims(model, image_shape))
    k = model.output_shape[0]
    print(f"wrote {out} (opset {args.opset}, input images float32 ({dims}) {values}, outputs "
          f"scores and probabilities, {k} classes)")
    if not args.check:
        return ExitCode.OK
    images, where = check_images(image_shape, data)
    try:
        diff = check(model, snap.normalization, proto, images)
    except Exception as exc:  # onnxruntime's errors are pybind11 classes of its own
        console.err(f"distnn export: onnxruntime cannot run {out}: {one_line(exc)}")
        return ExitCode.FAILED
    within = diff <= TOLERANCE
    tol = f"{TOLERANCE:g}".replace("e-0", "e-")  # 1e-5
    print(f"onnxruntime: max difference {diff:.2g} on {len(images)} {where}images "
          f"({'within' if within else 'ABOVE'} {tol})")
    if not within:
        console.err(f"distnn export: {out}: onnxruntime's scores differ from distnn's by "
                    f"{diff:.3g} > {tol} (the file is kept for inspection)")
        return ExitCode.FAILED
    return ExitCode.OK


def missing_packages(need_runtime: bool) -> str | None:
    """What to install when onnx (or, for --check, onnxruntime) cannot be imported, else None."""
    for name in ("onnx", "onnxruntime") if need_runtime else ("onnx",):
        try:
            __import__(name)
        except ImportError:
            return f"{name} is not installed; pip install 'distnn[onnx]'"
    return None


def open_dataset(cfg, data_dir: str | None) -> Dataset | None:
    """The test split of the checkpoint's dataset, if it is at hand (never downloaded)."""
    try:
        return get_dataset(cfg.data.dataset, "test", data_dir or cfg.data.data_dir,
                           download=False)
    except (DataError, OSError):
        return None


def load_network(path: Path, shape: tuple[int, ...] | None, data_dir: str | None,
                 want_data: bool) -> tuple[Sequential, Snapshot, list[str] | None, Dataset | None]:
    """(model with the saved parameters, Snapshot, class names or None, the test split of the
    checkpoint's dataset or None). The input shape is `shape`, else the one the checkpoint
    records, else its dataset's. The dataset is opened when needed (no shape), wanted (a
    check), or an HDF5 file (whose values may be float32 codes rather than pixels).
    `shape` and a dataset's are images' shapes, the recorded one the network's (they differ
    with pca_whiten: (1, 1, k))."""
    snap, cfg = read_saved(path, create_communicator("local"))
    names = snap.inputs.get("class_names")
    if shape is not None:
        shape = network_shape(path, snap, shape, f"--input-shape {','.join(map(str, shape))}")
    else:
        shape = tuple(snap.inputs["input_shape"]) if "input_shape" in snap.inputs else None
    data = None
    if shape is None or want_data or str(cfg.data.dataset).lower().endswith((".h5", ".hdf5")):
        data = open_dataset(cfg, data_dir)
    if shape is None:
        if data is None:
            raise CheckpointError(f"{path}: records no input shape and its dataset "
                                  f"{cfg.data.dataset!r} is not at hand; pass --input-shape "
                                  f"H,W,C (or --data-dir)")
        shape = network_shape(path, snap, tuple(data.image_shape), f"{data.name} images")
        names = names or list(data.class_names)
    return saved_network(path, snap, cfg, shape), snap, names, data


def check_images(image_shape: tuple[int, ...], data: Dataset | None) -> tuple[np.ndarray, str]:
    """Up to CHECK_IMAGES images for --check, and what they are ("" or "random "): evenly
    spaced ones of `data` when it holds images of `image_shape` (the graph's input), else
    random uint8 pixels."""
    if data is not None and len(data) and tuple(data.image_shape) == tuple(image_shape):
        idx = np.unique(np.linspace(0, len(data) - 1, min(CHECK_IMAGES, len(data))).round())
        return data.read(idx.astype(np.int64)), ""
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (CHECK_IMAGES, *image_shape), dtype=np.uint8), "random "
