"""`distnn plot`: the filter tiles for 1, 3 and other channel counts, the checkpoint they come
from, and every bad input (exit 2, one line), a missing matplotlib and a failed write."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from distnn.train import checkpoint  # noqa: E402
from distnn.watch import filters, plot  # noqa: E402
from tests.watch.plot_helpers import (  # noqa: E402
    NO_MPL,
    assert_png,
    conv_weights,
    normalised,
    plot_cli,
    run_of,
    write_checkpoint,
    write_synthetic,
)

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
