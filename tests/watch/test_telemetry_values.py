"""The numbers of the step and layers lines, the warnings' edges and the trace events, against
values written out here (in-process, so that the mutation run sees them)."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from distnn.config import Config, LogConfig, TrainConfig
from distnn.nn import Sequential
from distnn.train.metrics import MetricsLog
from distnn.train.state import RunState
from distnn.train.telemetry import BINS, Telemetry, activation_stats
from distnn.train.timeline import HEADER, Tracer

MODEL = ({"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dropout", "rate": 0.5},
         {"type": "dense", "units": 10})


def make(tmp_path, **log):
    cfg = Config(model=MODEL, train=TrainConfig(),
                 log=LogConfig(**{"every_steps": 0, "layers_every_steps": 0, "warn_window": 2,
                                  **log}))
    model = Sequential(list(MODEL), (5,), seed=0)
    path = tmp_path / "metrics.jsonl"
    return Telemetry(cfg, model, MetricsLog(path, True), rank=0), model, path


def lines(path, split):
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == split]


def at(step, epoch=0):
    state = RunState()
    state.step, state.epoch = step, epoch
    return state


X = np.zeros((1, 5), np.float32)


def test_step_lines_average_their_window(tmp_path):
    tel, _, path = make(tmp_path, every_steps=2)
    for step, (loss, correct) in enumerate([(1.0, 2), (3.0, 3), (5.0, 4), (5.0, 0)], start=1):
        tel.step_done(at(step, epoch=3), loss, correct, 4, 0.25, X, None)
    assert lines(path, "step") == [
        {"epoch": 3, "step": 2, "split": "step", "loss": 2.0, "accuracy": 5 / 8, "lr": 0.25,
         "n": 8},
        {"epoch": 3, "step": 4, "split": "step", "loss": 5.0, "accuracy": 0.5, "lr": 0.25,
         "n": 8}]


def test_a_window_of_one_sample(tmp_path):
    tel, _, path = make(tmp_path, every_steps=1)
    tel.step_done(at(1), 3.0, 1, 1, 0.5, X, None)
    assert lines(path, "step")[0]["loss"] == 3.0 and lines(path, "step")[0]["accuracy"] == 1.0


def test_layers_due():
    tel, _, _ = make_in_memory(layers_every_steps=50)
    assert tel.layers_due(50) and tel.layers_due(100) and not tel.layers_due(49)
    off, _, _ = make_in_memory()
    assert not off.layers_due(50) and not off.layers_due(0)


def make_in_memory(**log):
    cfg = Config(model=MODEL, log=LogConfig(**{"every_steps": 0, "layers_every_steps": 0,
                                               **log}))
    model = Sequential(list(MODEL), (5,), seed=0)
    return Telemetry(cfg, model, MetricsLog("/nonexistent", False), rank=0), model, None


def test_layers_line_values(tmp_path):
    """Norms from the layers' own arrays in float64, activations from a NumPy forward pass in
    evaluation mode (the dropout layer passes its input through) of the first 32 samples."""
    tel, model, path = make(tmp_path, layers_every_steps=1)
    model.params *= np.float32(0.1)  # weight norms below 1
    model.grads[...] = np.linspace(-1, 1, model.grads.size, dtype=np.float32)
    delta = np.linspace(0, 1e-3, model.params.size, dtype=np.float32)
    x = np.random.default_rng(1).standard_normal((64, 5)).astype(np.float32)
    tel.step_done(at(7, epoch=2), 1.0, 0, 64, 0.1, x, delta)
    (line,) = lines(path, "layers")
    assert (line["epoch"], line["step"], list(line["layers"])) == (
        2, 7, ["dense0", "relu1", "dropout2", "dense3"])
    base = model.params.ctypes.data
    for layer in (model.layers[0], model.layers[3]):
        entry = line["layers"][layer.name]
        offsets = [((p.ctypes.data - base) // 4, p.size) for p in layer.p.values()]
        d = math.sqrt(sum(float(np.sum(delta[o:o + n].astype(np.float64) ** 2))
                          for o, n in offsets))
        w = math.sqrt(sum(float(np.sum(p.astype(np.float64) ** 2)) for p in layer.p.values()))
        g = math.sqrt(sum(float(np.sum(p.astype(np.float64) ** 2)) for p in layer.g.values()))
        assert w < 1
        assert entry["update_ratio"] == pytest.approx(d / w, rel=1e-6)
        assert entry["weight_norm"] == pytest.approx(w, rel=1e-6)
        assert entry["grad_norm"] == pytest.approx(g, rel=1e-6)
    dense0 = model.layers[0]
    h = x[:32].astype(np.float64) @ dense0.p["W"].astype(np.float64) + dense0.p["b"]
    relu = np.maximum(h, 0)
    scores = relu @ model.layers[3].p["W"].astype(np.float64) + model.layers[3].p["b"]
    # dense0 computes the ReLU that follows it in place (Sequential fuses them): its outputs
    # are those after the ReLU.
    for name, out in (("dense0", relu), ("relu1", relu), ("dropout2", relu), ("dense3", scores)):
        entry = line["layers"][name]
        assert entry["count"] == out.size == 32 * out.shape[1]
        assert entry["act_mean"] == pytest.approx(out.mean(), rel=1e-5, abs=1e-7)
        assert entry["act_std"] == pytest.approx(out.std(), rel=1e-5)
        assert entry["hist_range"] == pytest.approx([out.min(), out.max()], rel=1e-5)
    assert line["layers"]["relu1"]["dead_frac"] == float(np.mean(~np.any(relu > 0, axis=0)))
    assert "dead_frac" not in line["layers"]["dropout2"]


def test_update_ratio_band_edges(tmp_path):
    """Out of band means above 1e-2 or below 1e-4: the edges themselves are in."""
    tel, _, path = make(tmp_path)
    for ratio in (1e-2, 1e-4, 1e-2, 1e-4):
        tel._check_layer(at(1), "conv0", {"update_ratio": ratio}, False)
    assert not lines(path, "warning")
    tel._check_layer(at(2), "conv0", {"update_ratio": 0.011}, False)
    tel._check_layer(at(3), "conv0", {"update_ratio": 0.02}, False)
    (warned,) = lines(path, "warning")
    assert warned == {"epoch": 0, "step": 3, "split": "warning", "warning": "update_ratio",
                      "message": "conv0: update ratio 0.02 above [0.0001, 0.01] for 2 layers "
                                 "lines (about 1e-3 is healthy: learning rate too high?)",
                      "layer": "conv0"}


def test_update_ratio_window_restarts_in_band_and_warns_again(tmp_path):
    tel, _, path = make(tmp_path)
    for ratio in (1e-5, 1e-3, 1e-5):  # out, in, out: never 2 in a row
        tel._check_layer(at(1), "conv0", {"update_ratio": ratio}, False)
    assert not lines(path, "warning")
    tel._check_layer(at(2), "conv0", {"update_ratio": 1e-5}, False)
    tel._check_layer(at(3), "conv0", {"update_ratio": 1e-3}, False)  # clears
    tel._check_layer(at(4), "conv0", {"update_ratio": 5e-5}, False)
    tel._check_layer(at(5), "conv0", {"update_ratio": 5e-5}, False)
    warned = lines(path, "warning")
    assert [w["step"] for w in warned] == [2, 5]
    assert warned[0]["message"] == ("conv0: update ratio 1e-05 below [0.0001, 0.01] for 2 "
                                    "layers lines (about 1e-3 is healthy: learning rate too "
                                    "low?)")


def test_annealed_edge(tmp_path):
    """Annealed means a rate below 10 % of the peak (here 2.0): 0.1 is, 0.2 is not."""
    tel, model, path = make(tmp_path, layers_every_steps=1)
    x = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    tiny = model.params * np.float32(1e-7)
    tel.step_done(at(1), 1.0, 0, 8, 2.0, x, None)
    for step in (2, 3):
        tel.step_done(at(step), 1.0, 0, 8, 0.1, x, tiny)
    assert not [w for w in lines(path, "warning") if w["warning"] == "update_ratio"]
    for step in (4, 5):
        tel.step_done(at(step), 1.0, 0, 8, 0.2, x, tiny)
    assert {w["layer"] for w in lines(path, "warning") if w["warning"] == "update_ratio"} == {
        "dense0", "dense3"}


def test_dead_relu_edge_and_rewarning(tmp_path):
    tel, _, path = make(tmp_path)
    tel._check_layer(at(1), "relu1", {"dead_frac": 0.5}, False)  # half: not more than half
    assert not lines(path, "warning")
    tel._check_layer(at(2), "relu1", {"dead_frac": 0.75}, False)
    tel._check_layer(at(3), "relu1", {"dead_frac": 0.75}, False)  # once until it clears
    tel._check_layer(at(4), "relu1", {"dead_frac": 0.25}, False)
    tel._check_layer(at(5), "relu1", {"dead_frac": 1.0}, False)
    warned = lines(path, "warning")
    assert [(w["step"], w["layer"]) for w in warned] == [(2, "relu1"), (5, "relu1")]
    assert warned[0]["message"] == "relu1: 75% of its ReLU units are dead (never active on the " \
                                   "batch)"


def test_gap_edge_and_rewarning(tmp_path):
    tel, _, path = make(tmp_path, gap_warning=0.25)
    tel.epoch_done(at(10, 0), 0, 0.75, 0.5)  # exactly the threshold: no warning
    assert not lines(path, "warning")
    tel.epoch_done(at(20, 1), 1, 1.0, 0.5)
    tel.epoch_done(at(30, 2), 2, 1.0, 0.5)
    tel.epoch_done(at(40, 3), 3, 0.5, 0.5)
    tel.epoch_done(at(50, 4), 4, 1.0, 0.25)
    warned = lines(path, "warning")
    assert [(w["epoch"], w["step"], w["warning"]) for w in warned] == [
        (1, 20, "overfitting"), (4, 50, "overfitting")]
    assert "layer" not in warned[0]
    assert warned[0]["message"] == ("epoch 1: train accuracy 1.0000 is 0.5000 above val accuracy "
                                    "0.5000 (log.gap_warning 0.25): overfitting; more "
                                    "regularisation or data?")


def test_activation_stats_edges():
    empty = activation_stats(np.zeros((0, 3), np.float32), relu=False)
    assert empty == {"act_mean": 0.0, "act_std": 0.0, "count": 0, "hist": [0] * BINS,
                     "hist_range": [0.0, 1.0]}
    constant = activation_stats(np.full((4, 3), 2.0, np.float32), relu=True)
    assert constant["hist_range"] == [2.0, 3.0] and constant["hist"][0] == 12
    assert sum(constant["hist"]) == 12 and len(constant["hist"]) == BINS
    assert constant["dead_frac"] == 0.0
    small = activation_stats(np.array([[0.5, 0.0], [0.25, 0.0]], np.float32), relu=True)
    assert small["dead_frac"] == 0.5  # the unit at 0.5 and 0.25 is alive
    tenths = np.full((1000, 1), 0.1, np.float32)
    stats = activation_stats(tenths, relu=False)
    assert stats["act_mean"] == float(tenths.mean(dtype=np.float64))  # summed in float64
    assert stats["act_std"] == float(tenths.std(dtype=np.float64))


def test_trace_event_fields(tmp_path):
    tracer = Tracer(tmp_path / "a" / "b", 2, cap_mb=1.0)
    tracer.step = 9
    tracer.add("backward", 1_234_567_890, 1_234_999_999)
    with tracer.span("update"):
        time.sleep(0.002)
    tracer.flush()
    data = json.loads((tmp_path / "a" / "b" / "rank2.json").read_text())
    assert data["otherData"] == {"rank": 2, "dropped_events": 0, "cap_bytes": 1_000_000}
    meta, first, second = data["traceEvents"]
    assert meta == {"name": "process_name", "ph": "M", "pid": 2, "tid": 0,
                    "args": {"name": "rank 2"}}
    assert first == {"name": "backward", "cat": "distnn", "ph": "X", "ts": 1_234_567,
                     "dur": 432, "pid": 2, "tid": 0, "args": {"step": 9}}
    assert second["name"] == "update" and 2000 <= second["dur"] < 10_000_000
    assert second["ts"] > first["ts"]
    assert not tracer.due()
    tracer.flushed -= 31.0
    assert tracer.due()


def test_trace_cap_is_exact_in_bytes(tmp_path):
    tracer = Tracer(tmp_path, 0, cap_mb=1.0)
    for i in range(3):
        tracer.add("forward", 1000 * i, 1000 * i + 1000)
    each = tracer.size // 3
    assert tracer.size == sum(len(e) + 1 for e in tracer.events) == 3 * each
    tracer.cap = 3 * each  # exactly three events fit
    tracer.add("forward", 3000, 4000)
    assert len(tracer.events) == 3 and tracer.dropped == 1 and tracer.size == 3 * each
    assert tracer.cap + HEADER == 3 * each + 512


def test_layers_line_of_an_empty_shard(tmp_path):
    """Rank 0 may hold no sample of a short last batch: the norms, and no activation keys."""
    tel, model, path = make(tmp_path, layers_every_steps=1)
    tel.step_done(at(1), 1.0, 0, 0, 0.1, np.zeros((0, 5), np.float32),
                  model.params * np.float32(1e-3))
    (line,) = lines(path, "layers")
    assert line["layers"]["dense0"]["update_ratio"] == pytest.approx(1e-3, rel=1e-4)
    assert line["layers"]["relu1"] == {} and "act_mean" not in line["layers"]["dense0"]


def test_upper_edge_twice_in_a_row_is_in_band(tmp_path):
    tel, _, path = make(tmp_path)
    for ratio in (1e-2, 1e-2, 1e-4, 1e-4):
        tel._check_layer(at(1), "conv0", {"update_ratio": ratio}, False)
    assert not lines(path, "warning")


def test_window_of_one_warns_again_after_an_in_band_line(tmp_path):
    tel, _, path = make(tmp_path, warn_window=1)
    for step, ratio in enumerate((0.5, 0.5, 1e-3, 0.5), start=1):
        tel._check_layer(at(step), "conv0", {"update_ratio": ratio}, False)
    assert [w["step"] for w in lines(path, "warning")] == [1, 4]


def test_a_constant_low_rate_is_not_annealed(tmp_path):
    """The peak starts at 0: a run whose rate is 0.05 throughout is at its peak, not annealed,
    and its tiny updates are warned."""
    tel, model, path = make(tmp_path, layers_every_steps=1)
    x = np.random.default_rng(1).standard_normal((8, 5)).astype(np.float32)
    for step in (1, 2):
        tel.step_done(at(step), 1.0, 0, 8, 0.05, x, model.params * np.float32(1e-7))
    assert {w["layer"] for w in lines(path, "warning") if w["warning"] == "update_ratio"} == {
        "dense0", "dense3"}


def test_a_new_tracer_is_not_due(tmp_path):
    assert not Tracer(tmp_path, 0, cap_mb=1.0).due()


def test_nonfinite_activations_keep_the_line_valid_json(tmp_path):
    """A diverging layer: the histogram of its finite values, the others counted, and a line
    that strict JSON parses (non-finite numbers written as strings)."""
    out = np.array([[1.0, np.inf], [np.nan, 2.0]], np.float32)
    stats = activation_stats(out, relu=False)
    assert stats["nonfinite"] == 2 and sum(stats["hist"]) == 2
    assert stats["hist_range"] == [1.0, 2.0] and math.isnan(stats["act_mean"])
    infinite = activation_stats(np.array([[1.0, np.inf]], np.float32), relu=False)
    assert infinite["act_mean"] == math.inf and math.isnan(infinite["act_std"])
    log = MetricsLog(tmp_path / "m.jsonl", True)
    log.add({"split": "layers", "layers": {"dense0": stats}, "x": [1.0, float("-inf")]})

    def refuse(name):
        raise AssertionError(f"bare {name} in the line")

    line = json.loads((tmp_path / "m.jsonl").read_text(), parse_constant=refuse)
    assert line["layers"]["dense0"]["act_mean"] == "nan" and line["x"] == [1.0, "-inf"]
