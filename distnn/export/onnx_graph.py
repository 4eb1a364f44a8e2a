"""A distnn Sequential, in evaluation mode, as an ONNX graph built with `onnx.helper`.

The graph takes what an image file holds: input `images`, float32 (N, C, H, W) with a symbolic
batch dimension N, raw pixel values 0..255 (a uint8 image cast to float). The normalisation
distnn applies before its first layer (`distnn.data.to_float`: x / 255, then (x - mean) / std
per channel) is part of the graph, as its own nodes: Mul by 1/255, then Sub mean and Div std
with constants shaped (1, C, 1, 1) when the checkpoint has a normalisation. The other kinds of
data.preprocess (distnn/data/preprocess.py): mean_image is a Sub of the mean image (1, C, H, W);
pca_whiten is a Transpose to NHWC and a Flatten (distnn's H, W, C order), a Sub of the mean
(1, D), a MatMul by the (D, k) whitening matrix (eigenvectors already divided by
sqrt(eigenvalue + eps)) and a Reshape to the network's input (1, 1, k), NCHW (N, k, 1, 1); the
graph's input is then the images the preprocessing was fitted on, not the network's input.
Outputs: `scores` (N, K), what distnn's forward gives, and `probabilities` (N, K), their
softmax over axis 1.

Layout: distnn's image maps are NHWC, ONNX's Conv and pooling operators want NCHW. The graph
keeps maps in NCHW (filters transposed once, here) and goes back to NHWC only where the order of
the values matters: at a flatten, whose (N, H*W*C) rows are then in distnn's H, W, C order, so a
dense layer's weights apply unchanged. After a flatten or a global average pool every tensor is
(N, D) in both. A tensor of the graph is NCHW exactly when the distnn layer it feeds has a
per-sample input shape (H, W, C).

    distnn layer     ONNX nodes
    conv             Conv (W (KH, KW, C, F) -> (F, C, KH, KW), strides, pads on all sides)
    maxpool/avgpool  MaxPool / AveragePool (kernel size x size, stride; distnn never pads)
    globalavgpool    GlobalAveragePool, Flatten (N, C, 1, 1) -> (N, C)
    flatten          Transpose NCHW -> NHWC, Flatten (nothing for a (N, D) input)
    dense            Gemm (x @ W + b; W (D, U) as it is)
    relu, tanh, ...  Relu, LeakyRelu (alpha), Elu (alpha), Tanh, Sigmoid
    prelu            PRelu (slopes a (C,) as (C, 1, 1) on NCHW maps, (D,) on vectors)
    dropout          nothing (identity in evaluation)
    batchnorm        BatchNormalization (running mean and variance, gamma, beta, eps)
    maxout           Reshape (N, U*k, ...) -> (N, U, k, ...), ReduceMax over axis 2

onnx (and, for `check`, onnxruntime) are optional: they are imported inside the functions.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from distnn.data.preprocess import Normalization, Preprocess, as_preprocess, image_shape_of
from distnn.data.transforms import to_float
from distnn.nn import Sequential
from distnn.nn.activations import ELU, LeakyReLU, Maxout, PReLU, ReLU, Sigmoid, Tanh
from distnn.nn.base import Layer
from distnn.nn.conv import Conv2D
from distnn.nn.dense import Dense, Flatten
from distnn.nn.pool import AvgPool2D, GlobalAvgPool, MaxPool2D
from distnn.nn.regularize import BatchNorm, Dropout

if TYPE_CHECKING:
    import onnx

MIN_OPSET = 13  # Softmax over one axis, Reshape and ReduceMax as used here
TOLERANCE = 1e-5  # what `check` is held to: |onnxruntime - distnn| / max(1, |distnn|)


class ExportError(ValueError):
    """A network that cannot be written as an ONNX graph (a layer, a shape, an opset); the
    message names what."""


class _Graph:
    """Nodes and initializers (constants) under construction. Tensor names: `images/...` for
    the input's normalisation, `<layer>/...` for a layer's (layer names hold no '/')."""

    def __init__(self, opset: int) -> None:
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper, self.opset = helper, numpy_helper, opset
        self.nodes: list[onnx.NodeProto] = []
        self.constants: list[onnx.TensorProto] = []

    def const(self, name: str, value: Any, dtype: type = np.float32) -> str:
        """An initializer `name` holding `value` as `dtype`; returns its name."""
        array: np.ndarray = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.constants.append(self.numpy_helper.from_array(array, name))
        return name

    def node(self, op: str, inputs: Sequence[str], out: str, **attrs: Any) -> str:
        """A node `op` (named like its one output `out`); returns `out`."""
        self.nodes.append(self.helper.make_node(op, list(inputs), [out], name=out, **attrs))
        return out


def _conv(g: _Graph, layer: Conv2D, x: str) -> str:
    w = g.const(f"{layer.name}/W", layer.p["W"].transpose(3, 2, 0, 1))  # (F, C, KH, KW)
    b = g.const(f"{layer.name}/b", layer.p["b"])
    k, s, p = layer.kernel, layer.stride, layer.pad
    return g.node("Conv", [x, w, b], f"{layer.name}/out", kernel_shape=[k, k], strides=[s, s],
                  pads=[p, p, p, p])


def _pool(op: str) -> Callable[[_Graph, Any, str], str]:
    def emit(g: _Graph, layer: MaxPool2D | AvgPool2D, x: str) -> str:
        size, stride = layer.size, layer.stride
        return g.node(op, [x], f"{layer.name}/out", kernel_shape=[size, size],
                      strides=[stride, stride])
    return emit


def _global_avg_pool(g: _Graph, layer: GlobalAvgPool, x: str) -> str:
    pooled = g.node("GlobalAveragePool", [x], f"{layer.name}/pooled")  # (N, C, 1, 1)
    return g.node("Flatten", [pooled], f"{layer.name}/out", axis=1)  # (N, C)


def _flatten(g: _Graph, layer: Flatten, x: str) -> str:
    if len(layer.in_shape or ()) != 3:
        return x  # (N, D) already
    nhwc = g.node("Transpose", [x], f"{layer.name}/nhwc", perm=[0, 2, 3, 1])
    return g.node("Flatten", [nhwc], f"{layer.name}/out", axis=1)  # rows in H, W, C order


def _dense(g: _Graph, layer: Dense, x: str) -> str:
    w = g.const(f"{layer.name}/W", layer.p["W"])  # (D, U)
    b = g.const(f"{layer.name}/b", layer.p["b"])
    return g.node("Gemm", [x, w, b], f"{layer.name}/out")


def _elementwise(op: str, alpha: bool = False) -> Callable[[_Graph, Any, str], str]:
    def emit(g: _Graph, layer: Any, x: str) -> str:
        attrs = {"alpha": float(layer.alpha)} if alpha else {}
        return g.node(op, [x], f"{layer.name}/out", **attrs)
    return emit


def _prelu(g: _Graph, layer: PReLU, x: str) -> str:
    # ONNX broadcasts the slope from the right (unidirectionally): one per channel of axis 1
    # is (C, 1, 1) against (N, C, H, W), (D,) against (N, D).
    a = layer.p["a"]
    image = len(layer.in_shape or ()) == 3
    slope = g.const(f"{layer.name}/a", a.reshape(-1, 1, 1) if image else a)
    return g.node("PRelu", [x, slope], f"{layer.name}/out")


def _dropout(g: _Graph, layer: Dropout, x: str) -> str:
    return x  # inverted dropout: the identity in evaluation


def _batchnorm(g: _Graph, layer: BatchNorm, x: str) -> str:
    # Channels are axis 1 of both (N, C, H, W) and (N, D): where ONNX normalises.
    names = [g.const(f"{layer.name}/{key}", arrays[key])
             for arrays, key in ((layer.p, "gamma"), (layer.p, "beta"),
                                 (layer.s, "running_mean"), (layer.s, "running_var"))]
    return g.node("BatchNormalization", [x, *names], f"{layer.name}/out",
                  epsilon=float(layer.eps))


def _maxout(g: _Graph, layer: Maxout, x: str) -> str:
    # distnn splits the channel axis C = U*k into (U, k), c = u*k + j, and keeps each group's
    # maximum. Channels are axis 1 here: (N, U*k, H, W) -> (N, U, k, H, W), max over axis 2.
    in_shape = layer.in_shape or ()
    units = in_shape[-1] // layer.k
    shape = [0, units, layer.k, *in_shape[:-1]]  # 0: N, copied from the input; then H, W
    groups = g.node("Reshape", [x, g.const(f"{layer.name}/shape", shape, np.int64)],
                    f"{layer.name}/groups")
    if g.opset >= 18:  # the axes became an input
        axes = g.const(f"{layer.name}/axes", [2], np.int64)
        return g.node("ReduceMax", [groups, axes], f"{layer.name}/out", keepdims=0)
    return g.node("ReduceMax", [groups], f"{layer.name}/out", axes=[2], keepdims=0)


# Exact types: a subclass may compute something else, and is refused like any unknown layer.
EMITTERS: dict[type[Layer], Callable[[_Graph, Any, str], str]] = {
    Conv2D: _conv, MaxPool2D: _pool("MaxPool"), AvgPool2D: _pool("AveragePool"),
    GlobalAvgPool: _global_avg_pool, Flatten: _flatten, Dense: _dense,
    ReLU: _elementwise("Relu"), LeakyReLU: _elementwise("LeakyRelu", alpha=True),
    PReLU: _prelu, ELU: _elementwise("Elu", alpha=True), Tanh: _elementwise("Tanh"),
    Sigmoid: _elementwise("Sigmoid"), Dropout: _dropout, BatchNorm: _batchnorm, Maxout: _maxout,
}


def check_exportable(model: Sequential, opset: int = 17) -> None:
    """ExportError naming the first thing of `model` that has no ONNX form: a layer of an
    unknown type, an input that is neither images (H, W, C) nor vectors (D,), an output that
    is not one score per class (K,), or an opset outside MIN_OPSET..onnx's newest."""
    from onnx.defs import onnx_opset_version

    if not MIN_OPSET <= opset <= onnx_opset_version():
        raise ExportError(f"opset {opset}: expected {MIN_OPSET} to {onnx_opset_version()} "
                          f"(the newest this onnx knows)")
    for layer in model.layers:
        if type(layer) not in EMITTERS:
            raise ExportError(f"{layer.name}: {layer.kind} ({type(layer).__name__}) cannot be "
                              f"exported to ONNX; expected layers of the types "
                              f"{', '.join(sorted(c.kind for c in EMITTERS))}")
    if len(model.input_shape) not in (1, 3):
        raise ExportError(f"input shape {model.input_shape}: expected images (H, W, C) or "
                          f"vectors (D,)")
    if len(model.output_shape) != 1:
        raise ExportError(f"{model.layers[-1].name}: the network outputs {model.output_shape} "
                          f"per sample; expected (K,), one score per class")


def input_dims(model: Sequential,
               image_shape: tuple[int, ...] | None = None) -> list[int | str]:
    """The dims of the graph's input: ["N", C, H, W] for images (H, W, C), ["N", D] else; of
    `image_shape` when given (pca_whiten's images), else of the network's input."""
    shape = tuple(image_shape) if image_shape is not None else model.input_shape
    return ["N", shape[2], shape[0], shape[1]] if len(shape) == 3 else ["N", shape[0]]


def _channel_mean_std(g: _Graph, pre: Preprocess, model: Sequential, x: str) -> str:
    channels = model.input_shape[-1]
    bcast = (1, channels, 1, 1) if len(model.input_shape) == 3 else (1, channels)
    mean, std = pre.arrays["mean"], pre.arrays["std"]
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ExportError(f"normalisation of {mean.shape} / {std.shape} values for inputs "
                          f"{model.input_shape}; expected ({channels},), one per channel")
    x = g.node("Sub", [x, g.const("images/mean", mean.reshape(bcast))], "images/centred")
    return g.node("Div", [x, g.const("images/std", std.reshape(bcast))], "images/normalized")


def _mean_image(g: _Graph, pre: Preprocess, model: Sequential, x: str) -> str:
    mean = pre.arrays["mean_image"]  # (H, W, C)
    if mean.shape != model.input_shape:
        raise ExportError(f"mean_image of shape {mean.shape} for inputs {model.input_shape}; "
                          f"expected the same shape")
    nchw = mean.transpose(2, 0, 1)[None]
    return g.node("Sub", [x, g.const("images/mean_image", nchw)], "images/centred")


def _pca_whiten(g: _Graph, pre: Preprocess, model: Sequential, x: str) -> str:
    k = pre.components
    if model.input_shape != (1, 1, k):
        raise ExportError(f"pca_whiten of {k} components for inputs {model.input_shape}; "
                          f"expected inputs (1, 1, {k})")
    nhwc = g.node("Transpose", [x], "images/nhwc", perm=[0, 2, 3, 1])
    flat = g.node("Flatten", [nhwc], "images/flat", axis=1)  # (N, D) in H, W, C order
    mean = pre.arrays["pca_mean"].reshape(1, -1)
    x = g.node("Sub", [flat, g.const("images/pca_mean", mean)], "images/centred")
    x = g.node("MatMul", [x, g.const("images/pca_whitening", pre.arrays["pca_whitening"])],
               "images/whitened")  # (N, k)
    shape = g.const("images/shape", [-1, k, 1, 1], np.int64)  # NCHW of (1, 1, k)
    return g.node("Reshape", [x, shape], "images/normalized")


PREPROCESSORS: dict[str, Callable[[_Graph, Preprocess, Sequential, str], str]] = {
    "channel_mean_std": _channel_mean_std, "mean_image": _mean_image, "pca_whiten": _pca_whiten,
}


def to_onnx(model: Sequential, normalization: Normalization, *,
            opset: int = 17, name: str = "distnn", value_scale: float = 255.0,
            class_names: Sequence[str] | None = None) -> onnx.ModelProto:
    """The ONNX model of `model` in evaluation mode, checked by `onnx.checker`.

    normalization: (mean (C,), std (C,)) of the checkpoint, a Preprocess (mean_image,
    pca_whiten), or None: the graph's first nodes apply it (Mul 1/value_scale, then Sub mean
    and Div std; Sub mean image; or pca_whiten's nodes, whose input is the images it was fitted
    on), so `images` holds raw values. value_scale:
    255 for uint8 pixels (images float32 (N, C, H, W) 0..255), 1 for the float32 codes of a
    features file. class_names, when given, are stored as metadata ("class_names", JSON).
    ExportError (before anything is built) for a network with no ONNX form."""
    import json

    import onnx
    from onnx import TensorProto, helper

    check_exportable(model, opset)
    g = _Graph(opset)
    try:
        pre = as_preprocess(normalization)
    except ValueError as exc:
        raise ExportError(f"normalisation: {exc}") from None
    dims = input_dims(model, image_shape_of(normalization, model.input_shape))
    x = "images"
    if value_scale != 1:
        x = g.node("Mul", [x, g.const("images/scale", 1.0 / value_scale)], "images/scaled")
    if pre is not None:
        x = PREPROCESSORS[pre.kind](g, pre, model, x)
    for layer in model.layers:
        x = EMITTERS[type(layer)](g, layer, x)
    g.node("Identity", [x], "scores")
    g.node("Softmax", ["scores"], "probabilities", axis=1)
    k = model.output_shape[0]
    graph = helper.make_graph(
        g.nodes, name,
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info(out, TensorProto.FLOAT, ["N", k])
         for out in ("scores", "probabilities")],
        initializer=g.constants)
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="distnn",
                              ir_version=helper.find_min_ir_version_for(opsets),
                              doc_string=f"input images: float32 {tuple(dims)}, "
                                         f"values 0..{value_scale:g}; outputs scores and "
                                         f"probabilities (N, {k})")
    if class_names is not None:
        helper.set_model_props(proto, {"class_names": json.dumps(list(class_names))})
    onnx.checker.check_model(proto, full_check=True)
    return proto


def onnx_inputs(images: np.ndarray) -> np.ndarray:
    """distnn's inputs (n, H, W, C) (or (n, D)), as stored (uint8), as the graph's `images`:
    float32 (n, C, H, W), the raw values."""
    x = np.asarray(images).astype(np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if x.ndim == 4 else x


def run_onnx(onnx_model: onnx.ModelProto, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(scores, probabilities), each (n, K) float32, of ONNX Runtime (CPU, one thread) on
    distnn-layout inputs `images` (n, H, W, C) as stored (uint8 pixels)."""
    # (onnxruntime ships no type information: an Any module, whatever mypy is told about it.)
    ort = importlib.import_module("onnxruntime")
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    scores, probabilities = session.run(["scores", "probabilities"],
                                        {"images": onnx_inputs(images)})
    return scores, probabilities


def check(model: Sequential, normalization: Normalization,
          onnx_model: onnx.ModelProto, images: np.ndarray) -> float:
    """The largest difference between ONNX Runtime's `scores` and distnn's
    `model.predict(to_float(images, normalization))` on `images` (n, H, W, C) uint8, NHWC as
    distnn reads them: max |ort - distnn| / max(1, |distnn|), i.e. absolute on scores up to 1
    and relative above (float32 rounding grows with the scores). 0.0 for no images."""
    if len(images) == 0:
        return 0.0
    ours = model.predict(to_float(images, normalization).astype(model.dtype, copy=False))
    scores, _ = run_onnx(onnx_model, images)
    ours = ours.astype(np.float64)
    return float(np.max(np.abs(scores - ours) / np.maximum(1.0, np.abs(ours))))
