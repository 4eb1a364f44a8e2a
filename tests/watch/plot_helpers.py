"""What the `distnn plot` tests share: a synthetic run in the full metrics format, checkpoint
writers, and readers of what was drawn."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib
import numpy as np
import yaml

matplotlib.use("Agg")
from matplotlib.image import imread  # noqa: E402

from distnn.cli import main as cli_main  # noqa: E402
from distnn.train.checkpoint import Snapshot, save_checkpoint  # noqa: E402
from distnn.watch import figures, plot  # noqa: E402

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
