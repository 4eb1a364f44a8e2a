"""`distnn export --onnx`: the ONNX graph of a network computes distnn's scores (checked by ONNX
Runtime itself, no mocks) for every layer type, and the command writes, checks and refuses."""

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
import onnx  # noqa: E402

from distnn.export.commands import load_network  # noqa: E402
from distnn.export.onnx_graph import ExportError, check, run_onnx, to_onnx  # noqa: E402
from distnn.nn import Sequential  # noqa: E402
from distnn.nn.activations import ReLU  # noqa: E402
from distnn.nn.base import Layer  # noqa: E402
from distnn.train.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from tests.train.runs import run, tiny_checkpoint  # noqa: E402

TOL = 1e-5  # |onnxruntime - distnn| / max(1, |distnn|), what `check` returns

# Each model holds per-sample maps with H != W and C > 1 before its flatten, so a flatten in
# the wrong order (C, H, W instead of H, W, C) would give other scores.
MODELS = {
    # convs with stride 1 pad 1 and stride 2 pad 1, leaky_relu/elu with non-default alpha, max
    # pooling with a stride below its size, a dense layer after the flatten.
    "conv_maxpool": ((13, 9, 2), [
        {"type": "conv", "filters": 6, "kernel": 3, "pad": 1}, {"type": "leaky_relu", "alpha": 0.2},
        {"type": "conv", "filters": 8, "kernel": 3, "stride": 2, "pad": 1},
        {"type": "elu", "alpha": 0.5}, {"type": "maxpool", "size": 3, "stride": 2},
        {"type": "flatten"}, {"type": "dense", "units": 7}]),
    # a stride 2 pad 0 conv, batchnorm of maps and of vectors, average pooling, tanh, sigmoid,
    # dropout, a fused conv + relu.
    "batchnorm_avgpool": ((12, 8, 3), [
        {"type": "conv", "filters": 4, "kernel": 2, "stride": 2}, {"type": "relu"},
        {"type": "batchnorm"}, {"type": "tanh"}, {"type": "avgpool", "size": 2},
        {"type": "flatten"}, {"type": "dense", "units": 10}, {"type": "batchnorm", "eps": 1e-3},
        {"type": "sigmoid"}, {"type": "dropout", "rate": 0.3}, {"type": "dense", "units": 5}]),
    # ends in a global average pool and a dense layer.
    "globalavgpool": ((9, 7, 3), [
        {"type": "conv", "filters": 6, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "conv", "filters": 4, "kernel": 1}, {"type": "globalavgpool"},
        {"type": "dense", "units": 3}]),
    # maxout on maps (channels) and on vectors.
    "maxout": ((8, 6, 2), [
        {"type": "conv", "filters": 8, "kernel": 3}, {"type": "maxout", "k": 2},
        {"type": "maxpool", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 12},
        {"type": "maxout", "k": 3}, {"type": "dropout"}, {"type": "dense", "units": 5}]),
    # prelu on maps (a slope per channel of axis 1: (C, 1, 1) against NCHW, with C, H and W all
    # different, so a slope on the wrong axis gives other scores or no graph) and on vectors.
    "prelu": ((7, 5, 2), [
        {"type": "conv", "filters": 3, "kernel": 3, "pad": 1}, {"type": "prelu"},
        {"type": "maxpool", "size": 2, "stride": 1}, {"type": "flatten"},
        {"type": "dense", "units": 6}, {"type": "prelu", "init": 0.1},
        {"type": "dense", "units": 4}]),
    # vectors in: (N, D) throughout.
    "vectors": ((10,), [
        {"type": "dense", "units": 8}, {"type": "batchnorm"}, {"type": "relu"},
        {"type": "flatten"}, {"type": "dense", "units": 4}]),
}


def network(key: str, seed: int = 3) -> Sequential:
    """MODELS[key] with the model's own random weights, and random biases, BatchNorm gammas,
    betas and running statistics (none of them left at their neutral initial values)."""
    shape, specs = MODELS[key]
    model = Sequential(specs, shape, seed=seed)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        for name, arr in [*layer.p.items(), *layer.s.items()]:
            if name in ("gamma", "running_var"):
                arr[...] = rng.uniform(0.5, 2.0, arr.shape)
            elif name != "W":
                arr[...] = rng.normal(0.0, 0.3, arr.shape)
    return model


def normalization(channels: int, seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.uniform(0.2, 0.8, channels).astype(np.float32),
            rng.uniform(0.1, 0.5, channels).astype(np.float32))


def pixels(model: Sequential, n: int = 17, seed: int = 7) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *model.input_shape), dtype=np.uint8)


def softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(("key", "opset", "normalized"), [
    ("conv_maxpool", 17, True), ("batchnorm_avgpool", 17, True), ("globalavgpool", 17, False),
    ("maxout", 13, True), ("maxout", 17, True), ("maxout", 18, True), ("prelu", 13, False),
    ("prelu", 17, True), ("vectors", 17, True)])
def test_onnxruntime_computes_distnns_scores_and_their_softmax(key, opset, normalized):
    model = network(key)
    norm = normalization(model.input_shape[-1]) if normalized else None
    proto = to_onnx(model, norm, opset=opset)
    images = pixels(model)
    from distnn.data import to_float

    ours = model.predict(to_float(images, norm)).astype(np.float64)
    assert 0.3 < np.abs(ours).max() < 100  # scores of order 1: the tolerance means something
    scores, probabilities = run_onnx(proto, images)
    assert scores.shape == probabilities.shape == (len(images), model.output_shape[0])
    scale = np.maximum(1.0, np.abs(ours))
    assert np.max(np.abs(scores - ours) / scale) <= TOL
    np.testing.assert_allclose(probabilities, softmax(ours), rtol=0, atol=1e-6)
    assert check(model, norm, proto, images) <= TOL
    assert [o.name for o in proto.graph.output] == ["scores", "probabilities"]
    dims = [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    shape = model.input_shape
    assert dims == (["N", shape[2], shape[0], shape[1]] if len(shape) == 3 else ["N", *shape])


def test_the_normalisation_is_in_the_graph_and_a_wrong_flatten_order_is_caught():
    model = network("conv_maxpool")
    norm = normalization(2)
    proto = to_onnx(model, norm, class_names=[f"c{i}" for i in range(7)])
    ops = [node.op_type for node in proto.graph.node]
    assert ops[:3] == ["Mul", "Sub", "Div"] and ops[-2:] == ["Identity", "Softmax"]
    assert json.loads({p.key: p.value for p in proto.metadata_props}["class_names"])[6] == "c6"
    images = pixels(model)
    assert check(model, norm, proto, images) <= TOL
    # The checks can fail: without its normalisation, or flattening in C, H, W order, the
    # graph computes something else.
    assert check(model, norm, to_onnx(model, None), images) > 1e-2
    transpose = next(node for node in proto.graph.node if node.op_type == "Transpose")
    del transpose.attribute[:]
    transpose.attribute.append(onnx.helper.make_attribute("perm", [0, 1, 2, 3]))
    assert check(model, norm, proto, images) > 1e-2


def test_prelu_slopes_are_per_channel_constants_of_a_prelu_node():
    model = network("prelu")
    maps, vectors = model.layers[1], model.layers[5]
    # network() gave every slope its own random value (some negative): none is the init.
    assert len(set(maps.p["a"].tolist() + vectors.p["a"].tolist())) == 3 + 6
    proto = to_onnx(model, None)
    prelus = [node for node in proto.graph.node if node.op_type == "PRelu"]
    assert [node.input[1] for node in prelus] == ["prelu1/a", "prelu5/a"]
    slopes = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    np.testing.assert_array_equal(slopes["prelu1/a"], maps.p["a"].reshape(3, 1, 1))
    np.testing.assert_array_equal(slopes["prelu5/a"], vectors.p["a"])
    images = pixels(model)
    assert check(model, None, proto, images) <= TOL
    # The ONNX graph holds the slopes: changing one channel's slope changes the scores.
    slope = next(t for t in proto.graph.initializer if t.name == "prelu1/a")
    changed = slopes["prelu1/a"].copy()
    changed[1] += 1.0
    slope.CopyFrom(onnx.numpy_helper.from_array(changed, "prelu1/a"))
    assert check(model, None, proto, images) > 1e-3


class Square(Layer):
    """A layer distnn's exporter does not know."""

    kind = "square"

    def forward(self, x, training):
        return x * x


class MyReLU(ReLU):
    """A subclass may compute something else: refused like an unknown layer."""


@pytest.mark.parametrize("cls", [Square, MyReLU])
def test_a_layer_without_an_onnx_form_is_an_export_error_naming_it(cls):
    model = network("globalavgpool")
    layer = cls(name="odd2")
    layer.build(model.layers[2].in_shape)
    model.layers.insert(2, layer)
    with pytest.raises(ExportError, match=r"^odd2: .* cannot be exported to ONNX; expected "):
        to_onnx(model, None)
    with pytest.raises(ExportError, match="opset 12: expected 13 to "):
        to_onnx(network("vectors"), None, opset=12)
    maps = Sequential([{"type": "conv", "filters": 2, "kernel": 1}], (3, 3, 1))
    with pytest.raises(ExportError, match=r"conv0: the network outputs \(3, 3, 2\) per sample"):
        to_onnx(maps, None)


# -- the command, on a real checkpoint -----------------------------------------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny model (tests.train.runs.TINY_MODEL) after 3 steps on mini MNIST."""
    return tiny_checkpoint(tmp_path_factory.mktemp("ckpt"), 3)


def test_export_writes_a_graph_that_onnxruntime_checks(tmp_path, checkpoint):
    out = tmp_path / "net.onnx"
    done = run(["export", str(checkpoint), "--onnx", str(out), "--check"])
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == (
        f"wrote {out} (opset 17, input images float32 (N, 1, 28, 28) 0..255, outputs scores "
        f"and probabilities, 10 classes)")
    line = done.stdout.splitlines()[1]
    assert line.startswith("onnxruntime: max difference ") and \
        line.endswith(" on 256 images (within 1e-5)"), line
    assert float(line.split()[3]) <= TOL
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    assert proto.opset_import[0].version == 17
    assert not [p for p in tmp_path.iterdir() if p.name != "net.onnx"]  # no temp file left


def test_a_checkpoint_without_its_input_shape_takes_it_from_the_dataset_or_the_flag(
        tmp_path, checkpoint):
    snap = load_checkpoint(checkpoint)
    snap.inputs = {}  # as written before checkpoints recorded it
    old = tmp_path / "old.h5"
    save_checkpoint(snap, old)
    model, _, names, data = load_network(old, None, None, want_data=False)
    assert model.input_shape == (28, 28, 1) and data is not None and len(names or ()) == 10
    model, _, _, data = load_network(old, (28, 28, 1), None, want_data=False)
    assert model.input_shape == (28, 28, 1) and data is None


def test_bad_input_is_one_line_and_exit_2(tmp_path, checkpoint):
    foreign = tmp_path / "notes.h5"
    foreign.write_text("not a checkpoint\n")
    done = run(["export", str(foreign), "--onnx", str(tmp_path / "a.onnx")])
    assert done.returncode == 2
    assert len(done.stderr.strip().splitlines()) == 1 and str(foreign) in done.stderr
    assert "not a readable distnn checkpoint" in done.stderr and done.stdout == ""
    existing = tmp_path / "b.onnx"
    existing.write_bytes(b"keep me")
    done = run(["export", str(checkpoint), "--onnx", str(existing)])
    assert done.returncode == 2
    assert done.stderr.strip() == f"distnn export: --onnx {existing}: exists; expected a new " \
                                  f"file (or --overwrite)"
    assert existing.read_bytes() == b"keep me"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.onnx", "notes.h5"]
