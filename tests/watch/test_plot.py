"""`distnn plot`: the figures and index.html of a real run (trained once for this module, in a
child process), of a synthetic run written in the full metrics.jsonl format (step, layers and
warning lines included, which real runs may not have yet), of a run in progress, of runs
overlaid. The filters and bad input: test_plot_checks.py; shared helpers: plot_helpers.py.

Expected values come from metrics.jsonl and the checkpoints as this test reads them (json,
h5py), or are written out here; the figures are read back through their gids.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from distnn.watch import figures, filters, plot  # noqa: E402
from tests.train.runs import run as run_distnn  # noqa: E402
from tests.watch.plot_helpers import (  # noqa: E402
    ACT_MEAN,
    ALL,
    EMA_HEAD,
    LAYER_STEPS,
    NEWEST_HIST,
    STEP_LOSS,
    STEPS,
    UPDATE,
    VAL,
    assert_outputs,
    by_gid,
    gids,
    metrics,
    nan_equal,
    normalised,
    plot_cli,
    reports,
    run_legend,
    run_of,
    write_synthetic,
)


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
