"""`distnn plot`: the figures and index.html of a real run (trained once for this module, in a
child process), of a synthetic run written in the full metrics.jsonl format (step, layers and
warning lines included, which real runs may not have yet), of a run in progress, of runs
overlaid; the filter tiles for 1, 3 and other channel counts; every bad input (exit 2, one line).

Expected values come from metrics.jsonl and the checkpoints as this test reads them (json,
h5py), or are written out here; the figures are read back through their gids.
"""

from __future__ import annotations

import errno
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest
import yaml

matplotlib.use("Agg")
from matplotlib.image import imread  # noqa: E402

from distnn.cli import main as cli_main  # noqa: E402
from distnn.train import checkpoint  # noqa: E402
from distnn.train.checkpoint import Snapshot, save_checkpoint  # noqa: E402
from distnn.watch import figures, filters, plot  # noqa: E402
from tests.train.runs import run as run_distnn  # noqa: E402

ALL = ("loss", "accuracy", "lr", "update_ratio", "activations", "filters")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
NO_MPL = "distnn plot: needs matplotlib: pip install 'distnn[plot]'"

# The synthetic run: 20 steps per epoch, 2 epochs; a step line every 5 steps, a layers line
# every 10.
SPEC = [{"type": "conv", "filters": 4, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 10}]
LAYERS = ["conv0", "relu1", "maxpool2", "flatten3", "dense4"]
STEPS = [5, 10, 15, 20, 25, 30, 35, 40]
STEP_LOSS = [2.0, 1.0, "nan", 0.5, 0.4, 0.35, 0.3, 0.25]
# EMA, beta 0.9, bias-corrected: m1 = 0.1*2 = 0.2 -> 0.2/0.1 = 2; m2 = 0.9*0.2 + 0.1*1 = 0.28 ->
# 0.28/(1-0.81) ; nan leaves m alone; m3 = 0.9*0.28 + 0.1*0.5 = 0.302 -> 0.302/(1-0.729).
EMA_HEAD = [2.0, 0.28 / 0.19, math.nan, 0.302 / 0.271]
LAYER_STEPS = [10, 20, 30, 40]
UPDATE = {"conv0": [2e-3, 1e-3, "inf", 5e-4], "dense4": [5e-3, 3e-3, 2e-3, 1e-5]}
ACT_MEAN = {"conv0": [0.1, 0.2, 0.3, 0.4], "relu1": [0.5, 0.6, 0.7, 0.8]}
NEWEST_HIST = {"conv0": (list(range(32)), [-1.0, 3.0]), "relu1": ([24] + [1] * 31, [0.0, 4.0])}
WARNING = "conv0: update ratio 2e-05 < 1e-4 for 5 <layers> lines"
TRAIN = [(0, 20, 1.2, 0.6, 0.1), (1, 40, 0.4, 0.85, 0.01)]  # epoch, step, loss, acc, lr
VAL = [(0, 10, 1.5, 0.5, 0.1), (0, 20, 1.0, 0.7, 0.1), (1, 40, 0.5, 0.8, 0.01)]


def layers_line(k: int, step: int) -> dict:
    newest = k == len(LAYER_STEPS) - 1
    entries = {}
    for name in LAYERS:
        entry: dict = {}
        if name in UPDATE:
            entry.update(update_ratio=UPDATE[name][k], grad_norm=0.5, weight_norm=2.0)
        if name in ACT_MEAN:
            entry.update(act_mean=ACT_MEAN[name][k], act_std=0.05)
            hist, span = NEWEST_HIST[name] if newest else ([1] * 32, [-9.0, 9.0])
            entry.update(hist=hist, hist_range=span)
        if name == "relu1":
            entry["dead_frac"] = 0.25
        entries[name] = entry
    return {"split": "layers", "epoch": step // 20, "step": step, "layers": entries}


def synthetic_lines() -> list[dict]:
    lines: list[dict] = []
    for i, step in enumerate(STEPS):
        lines.append({"split": "step", "epoch": (step - 1) // 20, "step": step,
                      "loss": STEP_LOSS[i], "accuracy": 0.5 + step / 100, "lr": 0.1, "n": 160})
        if step in LAYER_STEPS:
            lines.append(layers_line(LAYER_STEPS.index(step), step))
        for epoch, s, loss, acc, lr in TRAIN:
            if s == step:
                lines.append({"split": "train", "epoch": epoch, "step": s, "loss": loss,
                              "accuracy": acc, "lr": lr, "images_per_s": 100.0,
                              "grad_norm": 1.0, "update_ratio": 1e-3, "params_crc": 7})
        for epoch, s, loss, acc, lr in VAL:
            if s == step:
                lines.append({"split": "val", "epoch": epoch, "step": s, "loss": loss,
                              "accuracy": acc, "lr": lr, "n": 100, "images_per_s": 1e3,
                              "params_crc": 7})
        if step == 30:
            lines.append({"split": "warning", "epoch": 1, "step": 30,
                          "warning": "update_ratio_low", "message": WARNING, "layer": "conv0"})
            lines.append({"split": "rollback", "epoch": 1, "step": 30, "to_step": 20})
            lines.append({"split": "something_new", "step": 30, "loss": "whatever"})
    lines.append({"split": "test", "epoch": 2, "step": 40, "loss": 0.5, "accuracy": 0.8})
    return lines


def conv_weights(channels: int, filters: int = 4, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((3, 3, channels, filters)).astype(np.float32)


def write_checkpoint(path: Path, W: np.ndarray, spec: list | None = None) -> Path:
    """A checkpoint in the real format, written by the project's own writer."""
    channels, filters = W.shape[2], W.shape[3]
    spec = spec or [{"type": "conv", "filters": filters, "kernel": 3, "pad": 1},
                    {"type": "flatten"}, {"type": "dense", "units": 2}]
    snap = Snapshot(
        model={"conv0.W": W, "conv0.b": np.zeros(filters, np.float32),
               "dense2.W": np.ones((filters * 16, 2), np.float32)},
        optimizer={"t": 1}, normalization=(np.zeros(channels, np.float32),
                                           np.ones(channels, np.float32)),
        step=40, epoch=2, step_in_epoch=0, config_yaml="name: synthetic\n", model_spec=spec)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(snap, path)
    return path


def write_synthetic(run_dir: Path, channels: int = 3) -> Path:
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"name": "synthetic", "model": SPEC}))
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in synthetic_lines()))
    write_checkpoint(run_dir / "checkpoints" / "best.h5", conv_weights(channels),
                     spec=[dict(s) for s in SPEC[:1]] + SPEC[1:])
    return run_dir


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def reports(lines: list[dict], key: str, layer: str | None = None) -> bool:
    """Whether any layers line has `key` for `layer` (any layer if None): real runs may have
    no layers lines yet, or other keys."""
    return any(isinstance(entry, dict) and key in entry
               for r in lines if r["split"] == "layers"
               for name, entry in r["layers"].items() if layer in (None, name))


def plot_cli(capsys, *argv) -> tuple[int, str, str]:
    rc = cli_main(["plot", *map(str, argv)])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100, image.shape
    assert np.ptp(image[..., :3]) > 0.5, f"{path} is blank"


def assert_outputs(out: Path, made: set[str]) -> str:
    """Exactly the PNGs `made` (valid) and index.html, no temp file; returns the index."""
    assert set(os.listdir(out)) == {f"{n}.png" for n in made} | {"index.html"}
    index = (out / "index.html").read_text()
    for name in ALL:
        if name in made:
            assert_png(out / f"{name}.png")
            assert f'<img src="{name}.png"' in index
        else:
            assert f"{name}.png skipped: " in index and f'src="{name}.png"' not in index
    return index


def run_of(path: Path, label: str | None = None) -> figures.Run:
    return plot.read_run(path, label or path.name)


def by_gid(fig, gid: str):
    found = [a for ax in fig.axes for a in (*ax.lines, *ax.patches) if a.get_gid() == gid]
    assert len(found) == 1, (gid, [a.get_gid() for ax in fig.axes for a in ax.lines])
    return found[0]


def gids(fig) -> set[str]:
    return {a.get_gid() for ax in fig.axes for a in (*ax.lines, *ax.patches) if a.get_gid()}


def run_legend(fig) -> list[str]:
    legends = [leg for leg in fig.legends if leg.get_title().get_text() == "run"]
    assert len(legends) == 1
    return [t.get_text() for t in legends[0].get_texts()]


def nan_equal(a, b) -> bool:
    return np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-12, atol=0,
                       equal_nan=True)


def normalised(w: np.ndarray) -> np.ndarray:
    w = w.astype(float)
    return (w - w.min()) / (w.max() - w.min())


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("real") / "quick"
    proc = run_distnn(["train", "quickstart", "--run-dir", str(run_dir),
                       "--set", "train.epochs=2"])
    assert proc.returncode == 0, proc.stderr
    return run_dir


# --- a real run ----------------------------------------------------------------------------


def test_real_run(real_run, tmp_path, capsys):
    out = tmp_path / "out"
    rc, stdout, err = plot_cli(capsys, real_run, "--out", out)
    assert (rc, err) == (0, "")
    lines = metrics(real_run)
    # The trainer writes step and layers lines at the log: defaults (train/telemetry.py).
    assert reports(lines, "hist") and any(r["split"] == "step" for r in lines)
    made = {"loss", "accuracy", "lr", "update_ratio", "filters", "activations"}
    index = assert_outputs(out, made)
    assert f"{len(made)} figures and index.html in {out}" in stdout

    run = run_of(real_run)
    train = [r for r in lines if r["split"] == "train"]
    val = [r for r in lines if r["split"] == "val"]
    assert [r["epoch"] for r in train] == [0, 1] and len(val) >= 2

    acc = figures.build_accuracy([run]).fig
    assert run_legend(acc) == ["quick"]
    line = by_gid(acc, "quick:train")
    assert nan_equal(line.get_xdata(), [1.0, 2.0])  # the epoch ends: epochs completed
    assert nan_equal(line.get_ydata(), [r["accuracy"] for r in train])
    assert nan_equal(by_gid(acc, "quick:val").get_ydata(), [r["accuracy"] for r in val])

    loss = figures.build_loss([run]).fig
    steps = [r for r in lines if r["split"] == "step"]
    assert nan_equal(by_gid(loss, "quick:raw").get_ydata(), [r["loss"] for r in steps])

    ratio = figures.build_update_ratio([run]).fig
    conv0 = [r for r in lines if r["split"] == "layers" and "update_ratio" in
             r["layers"].get("conv0", {})]
    assert conv0
    assert nan_equal(by_gid(ratio, "quick:conv0").get_xdata(), [r["step"] for r in conv0])
    assert nan_equal(by_gid(ratio, "quick:conv0").get_ydata(),
                     [r["layers"]["conv0"]["update_ratio"] for r in conv0])

    # Filters: quickstart's conv0 is 3x3, 1 channel, 16 filters: gray tiles 4 wide.
    with h5py.File(real_run / "checkpoints" / "best.h5", "r") as fh:
        W = np.array(fh["model/conv0.W"])
    assert W.shape == (3, 3, 1, 16)
    weights = plot.find_weights(run, None)
    assert isinstance(weights, filters.Weights) and weights.source.endswith("best.h5")
    mosaic = filters.filter_mosaic(weights.W)
    assert mosaic.shape == (4 * 4 - 1, 4 * 4 - 1)
    for f in range(16):
        y, x = (f // 4) * 4, (f % 4) * 4
        assert np.allclose(mosaic[y:y + 3, x:x + 3], normalised(W[:, :, 0, f]))
    assert "conv0.W from quick/checkpoints/best.h5" in index


def test_run_in_progress(real_run, tmp_path, capsys):
    """The last line half written, no checkpoint yet: the figures of the complete lines, the
    filters noted as missing, and a filters.png left by an earlier plot removed. No --out: the
    figures go to <RUN_DIR>/plots."""
    run_dir = tmp_path / "live"
    run_dir.mkdir()
    shutil.copy(real_run / "config.yaml", run_dir)
    text = [t for t in (real_run / "metrics.jsonl").read_text().splitlines()
            if json.loads(t)["split"] != "test"]
    assert json.loads(text[-1])["split"] == "val"
    (run_dir / "metrics.jsonl").write_text("\n".join(text[:-1]) + "\n" + text[-1][:40])
    out = run_dir / "plots"
    out.mkdir()
    (out / "filters.png").write_bytes(b"stale")

    rc, stdout, err = plot_cli(capsys, run_dir)
    assert (rc, err) == (0, "")
    complete = [json.loads(t) for t in text[:-1]]
    assert reports(complete, "hist")
    made = {"loss", "accuracy", "lr", "update_ratio", "activations"}
    index = assert_outputs(out, made)
    assert "filters.png skipped: no checkpoint yet" in index
    assert f"line {len(text)} of metrics.jsonl is incomplete" in index
    assert "skipped filters.png: no checkpoint yet" in stdout

    complete_val = [r for r in complete if r["split"] == "val"]
    acc = figures.build_accuracy([run_of(run_dir)]).fig
    assert nan_equal(by_gid(acc, "live:val").get_ydata(), [r["accuracy"] for r in complete_val])


def test_two_runs_overlaid(real_run, tmp_path, capsys):
    alpha = tmp_path / "alpha"
    shutil.copytree(real_run, alpha)
    beta = write_synthetic(tmp_path / "beta")
    out = tmp_path / "out"
    rc, _, err = plot_cli(capsys, alpha, beta, "--out", out)
    assert (rc, err) == (0, "")
    index = assert_outputs(out, set(ALL))  # beta has layers lines: activations too
    assert "<b>alpha</b>" in index and "<b>beta</b>" in index

    runs = [run_of(alpha), run_of(beta)]
    for build in (figures.build_loss, figures.build_accuracy, figures.build_lr,
                  figures.build_update_ratio):
        fig = build(runs).fig
        assert run_legend(fig) == ["alpha", "beta"], build.__name__
    alpha_layers = bool(runs[0].of("layers"))  # the activations name the runs that have them
    assert run_legend(figures.build_activations(runs).fig) == ["alpha"] * alpha_layers + ["beta"]
    acc = figures.build_accuracy(runs).fig
    assert {"alpha:train", "alpha:val", "beta:train", "beta:val"} <= gids(acc)
    loss = figures.build_loss(runs).fig
    assert "beta:ema" in gids(loss) and ({"alpha:train", "alpha:ema"} & gids(loss))

    # Filters come from the first run (both have a best.h5).
    assert "conv0.W from alpha/checkpoints/best.h5" in index


def test_run_labels():
    assert plot.run_labels([Path("/x/a/run"), Path("/x/b/run"), Path("/x/c")]) == [
        "a/run", "b/run", "c"]
    assert plot.run_labels([Path("/x/run"), Path("/x/run")]) == ["run", "run (2)"]


# --- the full metrics format (synthetic) ---------------------------------------------------


def test_synthetic_run_every_figure(tmp_path, capsys):
    run_dir = write_synthetic(tmp_path / "syn")
    out = tmp_path / "out"
    rc, stdout, err = plot_cli(capsys, run_dir, "--out", out)
    assert (rc, err) == (0, "")
    index = assert_outputs(out, set(ALL))
    assert "png skipped" not in index and "skipped" not in stdout
    # The warning line, escaped.
    assert "update_ratio_low" in index
    assert "for 5 &lt;layers&gt; lines" in index and "<layers>" not in index
    assert "<td>30</td>" in index and "<td>conv0</td>" in index


def test_synthetic_values(tmp_path):
    run = run_of(write_synthetic(tmp_path / "syn"))
    assert [len(run.of(s)) for s in ("step", "layers", "train", "val", "warning")] == [
        8, 4, 2, 3, 1]  # rollback, test and unknown splits left out

    loss = figures.build_loss([run]).fig
    raw = by_gid(loss, "syn:raw")
    assert nan_equal(raw.get_xdata(), STEPS)
    assert nan_equal(raw.get_ydata(), [math.nan if v == "nan" else v for v in STEP_LOSS])
    assert nan_equal(by_gid(loss, "syn:ema").get_ydata()[:4], EMA_HEAD)
    assert nan_equal(by_gid(loss, "syn:val").get_ydata(), [v[2] for v in VAL])
    assert loss.axes[0].get_yscale() == "log"

    acc = figures.build_accuracy([run]).fig
    assert nan_equal(by_gid(acc, "syn:train").get_xdata(), [1, 2])
    assert nan_equal(by_gid(acc, "syn:val").get_xdata(), [0.5, 1, 2])  # steps 10, 20, 40 / 20
    assert nan_equal(by_gid(acc, "syn:val").get_ydata(), [v[3] for v in VAL])

    lr = by_gid(figures.build_lr([run]).fig, "syn:lr")
    assert nan_equal(lr.get_xdata(), STEPS)  # train and val steps are among them
    assert nan_equal(lr.get_ydata(), [0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1])

    ratio = figures.build_update_ratio([run]).fig
    assert gids(ratio) == {"syn:conv0", "syn:dense4", "band", "target"}
    conv = by_gid(ratio, "syn:conv0")
    assert nan_equal(conv.get_xdata(), LAYER_STEPS)
    assert nan_equal(conv.get_ydata(), [2e-3, 1e-3, math.nan, 5e-4])  # "inf": off the log axis
    assert nan_equal(by_gid(ratio, "syn:dense4").get_ydata(), UPDATE["dense4"])
    ax = ratio.axes[0]
    assert ax.get_yscale() == "log"
    band = by_gid(ratio, "band").get_extents().transformed(ax.transData.inverted())
    assert np.allclose([band.y0, band.y1], [1e-4, 1e-2])
    assert nan_equal(by_gid(ratio, "target").get_ydata(), [1e-3, 1e-3])

    acts = figures.build_activations([run]).fig
    assert len(acts.axes) == 4  # conv0 and relu1 (the layers with statistics), 2 panels each
    for name, (counts, (lo, hi)) in NEWEST_HIST.items():
        stairs = by_gid(acts, f"syn:{name}:hist")
        values, edges = stairs.get_data().values, stairs.get_data().edges
        assert nan_equal(values, np.array(counts) / sum(counts))  # the newest line's
        assert nan_equal(edges, np.linspace(lo, hi, 33))
        assert nan_equal(by_gid(acts, f"syn:{name}:mean").get_ydata(), ACT_MEAN[name])
    assert "dead: syn 25%" in acts.axes[2].get_title()


def test_layers_option(tmp_path, capsys):
    run_dir = write_synthetic(tmp_path / "syn", channels=1)
    out = tmp_path / "out"
    rc, _, err = plot_cli(capsys, run_dir, "--out", out, "--layers", "relu1,dense4")
    assert (rc, err) == (0, "")
    index = assert_outputs(out, set(ALL) - {"filters"})
    assert "filters.png skipped: none of --layers (relu1, dense4) is a conv layer" in index

    run = run_of(run_dir)
    wanted = plot.selected_layers("relu1, dense4", [run])
    assert wanted == ["relu1", "dense4"]
    assert gids(figures.build_update_ratio([run], wanted).fig) == {"syn:dense4", "band",
                                                                   "target"}
    acts = figures.build_activations([run], wanted).fig
    assert len(acts.axes) == 2 and acts.axes[0].get_title().startswith("relu1")
    assert figures.build_activations([run], ["dense4"]).skipped == (
        "none of --layers (dense4) reports a histogram or act_mean")

    rc, _, err = plot_cli(capsys, run_dir, "--out", out, "--layers", "conv0")
    assert rc == 0
    assert "conv0.W from syn/checkpoints/best.h5" in (out / "index.html").read_text()


# --- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_filter_grid(channels):
    """5 filters on a grid 3 wide (ceil(sqrt(5))), 2 rows, 1-pixel gaps of NaN."""
    W = conv_weights(channels, filters=5)
    W[:, :, :, 4] = 7.0  # a constant filter: mid gray
    mosaic = filters.filter_mosaic(W)
    assert mosaic.shape == (2 * 4 - 1, 3 * 4 - 1) + ((3,) if channels == 3 else ())
    for f in range(5):
        y, x = (f // 3) * 4, (f % 3) * 4
        tile = mosaic[y:y + 3, x:x + 3]
        want = np.full((3, 3, channels), 0.5) if f == 4 else normalised(W[:, :, :, f])
        assert np.allclose(tile, want if channels == 3 else want[:, :, 0])
    assert np.isnan(mosaic[3]).all() and np.isnan(mosaic[:, 3]).all()  # gaps
    assert np.isnan(mosaic[4:, 8:]).all()  # the empty sixth slot


def test_filters_other_channel_count():
    """2 input channels: one row per filter, one gray tile per channel, normalised per filter."""
    W = conv_weights(2, filters=3)
    mosaic = filters.filter_mosaic(W)
    assert mosaic.shape == (3 * 4 - 1, 2 * 4 - 1)
    for f in range(3):
        want = normalised(W[:, :, :, f])
        for ch in range(2):
            assert np.allclose(mosaic[f * 4:f * 4 + 3, ch * 4:ch * 4 + 3], want[:, :, ch])


@pytest.mark.parametrize("channels", [1, 3, 2])
def test_filters_figure_from_a_checkpoint(tmp_path, channels):
    run_dir = write_synthetic(tmp_path / "syn", channels=channels)
    drawn = filters.build_filters(plot.find_weights(run_of(run_dir), None))
    (tmp_path / "filters.png").write_bytes(plot.png_bytes(drawn))
    assert_png(tmp_path / "filters.png")
    fig = drawn.fig
    shown = fig.axes[0].images[0].get_array()
    mosaic = filters.filter_mosaic(conv_weights(channels))
    rgb = mosaic if channels == 3 else np.repeat(mosaic[:, :, None], 3, axis=2)
    tiles = np.isfinite(rgb).all(axis=2)
    assert np.allclose(shown[tiles], rgb[tiles])
    assert np.allclose(shown[~tiles], filters.GAP_COLOR)


def test_best_then_last_checkpoint(tmp_path):
    run_dir = write_synthetic(tmp_path / "syn", channels=1)
    folder = run_dir / "checkpoints"
    write_checkpoint(folder / "last.h5", conv_weights(1, seed=5))
    used = plot.find_weights(run_of(run_dir), None)
    assert isinstance(used, filters.Weights) and used.source == "syn/checkpoints/best.h5"
    assert np.array_equal(used.W, conv_weights(1))

    (folder / "best.h5").write_bytes(b"not hdf5 at all")
    used = plot.find_weights(run_of(run_dir), None)
    assert isinstance(used, filters.Weights) and used.source == "syn/checkpoints/last.h5"
    assert np.array_equal(used.W, conv_weights(1, seed=5))
    assert "best.h5: not a readable distnn checkpoint" in used.notes[0]

    (folder / "best.h5").unlink()
    used = plot.find_weights(run_of(run_dir), None)
    assert isinstance(used, filters.Weights) and used.source == "syn/checkpoints/last.h5"

    (folder / "last.h5").write_bytes(b"")
    reason = plot.find_weights(run_of(run_dir), None)
    assert isinstance(reason, str) and reason.startswith("no readable checkpoint: ")

    write_checkpoint(folder / "best.h5", np.ones((4, 4), np.float32)[None, None],
                     spec=[{"type": "flatten"}, {"type": "dense", "units": 2}])
    assert plot.find_weights(run_of(run_dir), None) == (
        "checkpoints/best.h5: the model has no conv layer")


# --- bad input -------------------------------------------------------------------------------


def metrics_file(content: str | bytes):
    def make(tmp_path: Path) -> Path:
        run_dir = tmp_path / "run"
        run_dir.mkdir()
        data = content.encode() if isinstance(content, str) else content
        (run_dir / "metrics.jsonl").write_bytes(data)
        return run_dir
    return make


def no_metrics(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    return tmp_path / "run"


def a_file(tmp_path: Path) -> Path:
    (tmp_path / "run").write_text("x")
    return tmp_path / "run"


GOOD = json.dumps({"split": "train", "epoch": 0, "step": 1, "loss": 1.0, "accuracy": 0.5,
                   "lr": 0.1})
BAD_INPUT = [
    ("missing", lambda tmp: tmp / "run", [], "run: no such run directory"),
    ("file", a_file, [], "run: not a directory (expected a run directory)"),
    ("no metrics", no_metrics, [], "run: no metrics.jsonl (not a run directory"),
    ("empty", metrics_file(""), [], "metrics.jsonl: empty (no lines yet)"),
    ("blank", metrics_file("\n  \n"), [], "metrics.jsonl: empty (no lines yet)"),
    ("half line only", metrics_file('{"split": "tr'), [],
     "metrics.jsonl: no complete line yet (line 1 is not valid JSON"),
    ("corrupt middle", metrics_file(f"{GOOD}\n{{oops\n{GOOD}\n"), [],
     "metrics.jsonl line 2: not valid JSON"),
    ("binary middle", metrics_file(f"{GOOD}\n".encode() + b"\xff\xfe\x00\n" + GOOD.encode()), [],
     "metrics.jsonl line 2: not valid JSON"),
    ("list middle", metrics_file(f"{GOOD}\n[1, 2]\n{GOOD}\n"), [],
     "metrics.jsonl line 2: a JSON list, expected one JSON object per line (the file is corrupt)"),
    ("no layer name", metrics_file(GOOD), ["--layers", " , "], "--layers: no layer name given"),
    ("unknown layer", metrics_file(GOOD), ["--layers", "conv0"],
     "--layers: unknown layer conv0; known layers: none (no config.yaml model and no layers "
     "lines)"),
]


@pytest.mark.parametrize("make, extra, message", [b[1:] for b in BAD_INPUT],
                         ids=[b[0] for b in BAD_INPUT])
def test_bad_input(tmp_path, capsys, make, extra, message):
    run_dir = make(tmp_path)
    out = tmp_path / "out"
    rc, stdout, err = plot_cli(capsys, run_dir, "--out", out, *extra)
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith("distnn plot: ") and message in err, err
    assert "Traceback" not in err and stdout == ""
    assert not out.exists()


def test_bad_second_run(tmp_path, capsys):
    good = write_synthetic(tmp_path / "syn")
    rc, _, err = plot_cli(capsys, good, tmp_path / "nope", "--out", tmp_path / "out")
    assert rc == 2 and err == f"distnn plot: {tmp_path / 'nope'}: no such run directory\n"


def test_unknown_layer_lists_the_known_ones(tmp_path, capsys):
    run_dir = write_synthetic(tmp_path / "syn")
    rc, _, err = plot_cli(capsys, run_dir, "--layers", "conv0,conv9")
    assert rc == 2
    assert err == ("distnn plot: --layers: unknown layer conv9; known layers: conv0, relu1, "
                   "maxpool2, flatten3, dense4\n")


def test_bad_input_from_the_command_line(tmp_path):
    """The real entry point: exit status 2 and one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "distnn.cli", "plot", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr == f"distnn plot: {tmp_path / 'nope'}: no such run directory\n"


def test_without_matplotlib(tmp_path, capsys, monkeypatch):
    run_dir = write_synthetic(tmp_path / "syn")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    rc, stdout, err = plot_cli(capsys, run_dir)
    assert (rc, stdout, err) == (2, "", NO_MPL + "\n")
    assert not (run_dir / "plots").exists()


def test_a_failed_write_leaves_the_previous_files(tmp_path, capsys, monkeypatch):
    """A write that fails half way (disk full) leaves the previous PNG whole and no temp file."""
    run_dir = write_synthetic(tmp_path / "syn")
    out = tmp_path / "out"
    out.mkdir()
    (out / "loss.png").write_bytes(b"previous")

    def half_then_full(fd, data):
        os.write(fd, data[:len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(checkpoint, "write_bytes", half_then_full)
    rc, _, err = plot_cli(capsys, run_dir, "--out", out)
    assert rc == 74
    assert err == f"distnn plot: cannot write into {out}: No space left on device\n"
    assert os.listdir(out) == ["loss.png"] and (out / "loss.png").read_bytes() == b"previous"
