"""The warnings of train/telemetry.py, the size cap of train/timeline.py, and the bad input of
`distnn trace` and of the log: keys."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from distnn.config import Config, LogConfig, TrainConfig
from distnn.nn import Sequential
from distnn.train.metrics import MetricsLog
from distnn.train.state import RunState
from distnn.train.telemetry import Telemetry, activation_stats
from distnn.train.timeline import Tracer
from tests.test_bad_input import bad_input, train_bad

MODEL = ({"type": "dense", "units": 8}, {"type": "relu"}, {"type": "dense", "units": 10})


def telemetry(tmp_path, **log):
    cfg = Config(model=MODEL, train=TrainConfig(),
                 log=LogConfig(**{"every_steps": 1, "layers_every_steps": 1,
                                  "warn_window": 2, **log}))
    model = Sequential(list(MODEL), (5,), seed=0)
    metrics = MetricsLog(tmp_path / "metrics.jsonl", True)
    return Telemetry(cfg, model, metrics, rank=0), model, tmp_path / "metrics.jsonl"


def records(path, split="warning"):
    if not path.exists():
        return []
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["split"] == split]


def step(tel, state, loss, lr=0.1, delta=None, x=None):
    state.step += 1
    x = np.random.default_rng(0).standard_normal((64, 5)).astype(np.float32) if x is None else x
    tel.step_done(state, loss, 2, 4, lr, x, delta)


def test_not_learning_warned_once_until_it_clears(tmp_path, capsys):
    tel, _, path = telemetry(tmp_path)
    state, chance = RunState(), math.log(10)
    for _ in range(3):
        step(tel, state, chance * 1.01)
    assert not records(path)  # 3 step lines < 2 * warn_window
    for _ in range(3):
        step(tel, state, chance)
    warned = records(path)
    assert [r["warning"] for r in warned] == ["not_learning"] and warned[0]["step"] == 4
    assert capsys.readouterr().err.count("not learning") == 1
    step(tel, state, 1.0)  # it learns: the condition clears
    for _ in range(4):
        step(tel, state, chance)
    assert [r["step"] for r in records(path)] == [4, 11]


def test_update_ratio_out_of_band(tmp_path):
    tel, model, path = telemetry(tmp_path)
    state = RunState()
    big = model.params * np.float32(0.05)  # ratio 0.05 > 1e-2
    step(tel, state, 1.0, delta=big)
    assert not records(path)  # one line out of band, the window is 2
    step(tel, state, 1.0, delta=big)
    warned = records(path)
    assert {r["layer"] for r in warned} == {"dense0", "dense2"}
    assert all(r["warning"] == "update_ratio" and "above" in r["message"] for r in warned)
    layers = records(path, "layers")[-1]["layers"]
    assert layers["dense0"]["update_ratio"] == pytest.approx(0.05, rel=1e-5)


def test_small_updates_of_an_annealed_rate_are_not_warned(tmp_path):
    tel, model, path = telemetry(tmp_path)
    state = RunState()
    tiny = model.params * np.float32(1e-6)
    step(tel, state, 1.0, lr=1.0)  # the peak rate
    for _ in range(3):
        step(tel, state, 1.0, lr=0.05, delta=tiny)  # annealed: below 10 % of the peak
    assert not records(path)
    for _ in range(2):
        step(tel, state, 1.0, lr=0.5, delta=tiny)
    assert {r["layer"] for r in records(path)} == {"dense0", "dense2"}
    assert all("below" in r["message"] for r in records(path))


def test_dead_relus(tmp_path):
    tel, model, path = telemetry(tmp_path)
    state = RunState()
    model.layers[0].p["b"][...] = -100.0  # every unit of relu1 is dead
    step(tel, state, 1.0, delta=model.params * np.float32(1e-3))
    warned = records(path)
    assert [(r["warning"], r["layer"]) for r in warned] == [("dead_relu", "relu1")]
    assert records(path, "layers")[-1]["layers"]["relu1"]["dead_frac"] == 1.0


def test_overfitting_gap(tmp_path):
    tel, _, path = telemetry(tmp_path, gap_warning=0.1)
    state = RunState()
    tel.epoch_done(state, 0, 0.80, 0.75)
    assert not records(path)
    tel.epoch_done(state, 1, 0.99, 0.80)
    assert [r["warning"] for r in records(path)] == ["overfitting"]


def test_activation_stats():
    out = np.array([[0.0, 1.0, 0.0], [0.0, 3.0, 2.0]], np.float32)
    stats = activation_stats(out, relu=True)
    assert stats["dead_frac"] == pytest.approx(1 / 3)  # unit 0 is zero for both samples
    assert stats["count"] == 6 and sum(stats["hist"]) == 6
    assert stats["hist_range"] == [0.0, 3.0]
    assert stats["act_mean"] == pytest.approx(1.0) and stats["act_std"] == pytest.approx(
        float(np.std(out)))
    assert "dead_frac" not in activation_stats(out, relu=False)


def test_trace_capped_oldest_dropped(tmp_path):
    tracer = Tracer(tmp_path, 3, cap_mb=0.01)
    for i in range(1000):
        tracer.step = i
        tracer.add("forward", 1_000_000 * i, 1_000_000 * i + 500_000)
    tracer.flush()
    path = tmp_path / "rank3.json"
    assert path.stat().st_size <= 10_000
    data = json.loads(path.read_text())
    kept = [e for e in data["traceEvents"] if e["ph"] == "X"]
    assert data["otherData"]["dropped_events"] == 1000 - len(kept) > 0
    assert [e["args"]["step"] for e in kept] == list(range(1000 - len(kept), 1000))
    assert kept[-1]["dur"] == 500 and kept[-1]["pid"] == 3


def test_trace_bad_input(tmp_path):
    assert "no such run directory" in bad_input(["trace", str(tmp_path / "nope")])
    (tmp_path / "run" / "trace").mkdir(parents=True)
    assert "no trace files" in bad_input(["trace", str(tmp_path / "run")])
    (tmp_path / "run" / "trace" / "rank0.json").write_text('{"traceEvents": [')
    assert "rank0.json: not a Chrome trace" in bad_input(["trace", str(tmp_path / "run")])
    tracer = Tracer(tmp_path / "run" / "trace", 0, cap_mb=1.0)
    tracer.add("forward", 0, 5000)
    tracer.flush()
    out = tmp_path / "no" / "such" / "merged.json"
    assert f"--out {out}: No such file or directory" in bad_input(
        ["trace", str(tmp_path / "run"), "--out", str(out)])


def test_trace_report_skips_foreign_events(tmp_path, capsys):
    """Events of other tools in a rank file (no duration, no args) are left out of the table."""
    folder = tmp_path / "run" / "trace"
    tracer = Tracer(folder, 1, cap_mb=1.0)
    tracer.step = 4
    tracer.add("forward", 0, 3_000_000)
    tracer.add("backward", 3_000_000, 8_000_000)
    tracer.flush()
    data = json.loads((folder / "rank1.json").read_text())
    data["traceEvents"] += [{"ph": "X", "name": "other"}, {"ph": "i", "name": "mark"}, 7,
                            {"ph": "X", "name": "odd", "dur": 1000, "args": "none"}]
    (folder / "rank1.json").write_text(json.dumps(data))
    from distnn.cli import main

    assert main(["trace", str(tmp_path / "run")]) == 0
    out = capsys.readouterr().out
    assert "rank 1" in out and "3.00" in out and "5.00" in out
    assert "its slowest phase: backward (5.00 ms per step)" in out


def test_trace_cap_of_zero(tmp_path):
    assert "log.trace_mb: 0.0 must be > 0" in train_bad(tmp_path, log={"trace_mb": 0})
