"""The new metrics lines, the trace and the TensorBoard files on real runs: local and under
`mpiexec -n 2` (train/telemetry.py, train/timeline.py, train/tensorboard.py, watch/trace.py)."""

from __future__ import annotations

import json
import math

import pytest

from tests.train.runs import mpiexec, run, write_config

STEPS, EVERY, LAYERS_EVERY = 60, 10, 20
LOG = {"every_steps": EVERY, "layers_every_steps": LAYERS_EVERY, "trace": True,
       "tensorboard": True}


def lines(run_dir, split):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["split"] == split:
            out.append(record)
    return out


def train(tmp, name, ranks=None, **log):
    cfg = write_config(tmp / f"{name}.yaml", train={"epochs": 1, "max_steps": STEPS,
                                                    "global_batch": 64, "invariant": True},
                       log=log)
    out = run(["train", str(cfg), "--run-dir", str(tmp / name)], ranks=ranks, timeout=600)
    assert out.returncode == 0, out.stderr
    return tmp / name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("telemetry")
    return {"local": train(tmp, "local", **LOG),
            "quiet": train(tmp, "quiet", every_steps=0, layers_every_steps=0),
            "mpi": train(tmp, "mpi", ranks=2, **LOG) if mpiexec() else None}


def test_step_lines(runs):
    steps = lines(runs["local"], "step")
    assert [r["step"] for r in steps] == list(range(EVERY, STEPS + 1, EVERY))
    assert all(r["n"] == 64 * EVERY for r in steps)  # every sample of the window counted once
    assert all(0 < r["loss"] < 10 and 0 <= r["accuracy"] <= 1 and r["lr"] > 0 for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"]  # it learns


def test_layers_lines(runs):
    records = lines(runs["local"], "layers")
    assert [r["step"] for r in records] == list(range(LAYERS_EVERY, STEPS + 1, LAYERS_EVERY))
    layers = records[-1]["layers"]
    assert list(layers) == ["conv0", "relu1", "maxpool2", "conv3", "relu4", "maxpool5",
                            "flatten6", "dense7"]
    for name, entry in layers.items():
        assert sum(entry["hist"]) == entry["count"] and len(entry["hist"]) == 32
        lo, hi = entry["hist_range"]
        assert lo <= entry["act_mean"] <= hi and entry["act_std"] >= 0
        has_params = name.startswith(("conv", "dense"))
        assert ("update_ratio" in entry) == has_params
        if has_params:
            assert 1e-6 < entry["update_ratio"] < 1 and entry["grad_norm"] > 0
            assert entry["weight_norm"] > 0
        assert ("dead_frac" in entry) == name.startswith("relu")
    # The conv outputs count ACT_SAMPLES (32) samples of 28x28x6 values.
    assert layers["conv0"]["count"] == 32 * 28 * 28 * 6
    assert 0 <= layers["relu1"]["dead_frac"] <= 1
    assert layers["relu1"]["hist_range"][0] == 0.0  # a ReLU's outputs start at 0


def test_telemetry_leaves_training_unchanged(runs):
    """The parameters after the run are the same bits with telemetry on and off."""
    on, off = lines(runs["local"], "train")[-1], lines(runs["quiet"], "train")[-1]
    assert on["params_crc"] == off["params_crc"]
    assert not lines(runs["quiet"], "step") and not lines(runs["quiet"], "layers")


def test_mpi_lines_match_one_rank(runs):
    """With the invariant step, the globally reduced numbers of the step and layers lines are
    the same on 2 ranks as on 1 (the activation statistics are rank 0's shard: not compared)."""
    one, two = runs["local"], runs["mpi"]
    assert lines(two, "step") == lines(one, "step")
    for a, b in zip(lines(one, "layers"), lines(two, "layers"), strict=True):
        for name, entry in a["layers"].items():
            for key in ("update_ratio", "grad_norm", "weight_norm"):
                assert entry.get(key) == b["layers"][name].get(key), (name, key)


def test_trace_merged_across_ranks(runs):
    run_dir = runs["mpi"]
    files = sorted(p.name for p in (run_dir / "trace").iterdir())
    assert files == ["rank0.json", "rank1.json"]
    out = run(["trace", str(run_dir)])
    assert out.returncode == 0, out.stderr
    merged = json.loads((run_dir / "trace.json").read_text())
    spans = [e for e in merged["traceEvents"] if e["ph"] == "X"]
    assert {e["pid"] for e in spans} == {0, 1}
    names = {e["name"] for e in spans}
    assert {"data_wait", "forward", "backward", "allreduce", "update", "validation",
            "checkpoint"} <= names
    steps = {e["args"]["step"] for e in spans if e["name"] == "forward"}
    assert steps == set(range(STEPS))
    assert all(e["dur"] >= 0 and e["ts"] > 0 for e in spans)
    assert "slowest rank:" in out.stdout and "ms per step" in out.stdout


def test_tensorboard_read_back(runs):
    """TensorBoard's own loader reads the scalars and histograms back."""
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    acc = accumulator.EventAccumulator(str(runs["local"] / "tensorboard"),
                                       size_guidance={"scalars": 0, "histograms": 0})
    acc.Reload()
    tags = acc.Tags()
    loss = acc.Scalars("step/loss")
    steps = lines(runs["local"], "step")
    assert [e.step for e in loss] == [r["step"] for r in steps]
    assert all(math.isclose(e.value, r["loss"], rel_tol=1e-6)
               for e, r in zip(loss, steps, strict=True))
    assert "layers/conv0/update_ratio" in tags["scalars"]
    assert "val/accuracy" in tags["scalars"]
    hist = acc.Histograms("activations/conv0")
    assert len(hist) == STEPS // LAYERS_EVERY
    layers = lines(runs["local"], "layers")[-1]["layers"]["conv0"]
    assert hist[-1].histogram_value.num == layers["count"]
    assert list(hist[-1].histogram_value.bucket) == layers["hist"]
