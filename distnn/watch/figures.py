"""The figures of `distnn plot`, built from parsed run directories (plot.py reads them).

Each `build_*` returns a `Drawn`: a matplotlib Figure (no pyplot, so no global state), or the
reason it was skipped, plus caption lines for index.html. Every curve carries a gid
"<run label>:<what>" (e.g. "alpha:ema", "alpha:conv0") so that what was drawn can be read back.
matplotlib is imported inside `_figure` and `_legend` only: this module loads without it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

BAND = (1e-4, 1e-2)  # the healthy range of a layer's update ratio |dW| / |W| per step
TARGET = 1e-3
EMA_BETA = 0.9
LINESTYLES = ("-", "--", ":", "-.")


@dataclass
class Run:
    """One run directory's metrics: lines by split ("train", "val", "step", "layers",
    "warning"), in file order; `model_layers`: layer names from config.yaml, in model order."""

    path: Path
    label: str
    lines: dict[str, list[dict]]
    model_layers: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of(self, split: str) -> list[dict]:
        return self.lines.get(split, [])


@dataclass
class Drawn:
    name: str
    fig: Figure | None = None
    skipped: str = ""
    caption: list[str] = field(default_factory=list)


def number(value: Any) -> float:
    """A metrics value as a float: numbers, and the strings "nan" / "inf" / "-inf" that
    metrics.jsonl writes for non-finite values; anything else (absent, null, text) is NaN."""
    if isinstance(value, bool):
        return math.nan
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in ("nan", "inf", "-inf", "+inf"):
        return float(value)
    return math.nan


def xy(lines: list[dict], key: str, x_key: str = "step") -> tuple[np.ndarray, np.ndarray]:
    return (np.array([number(r.get(x_key)) for r in lines], dtype=float),
            np.array([number(r.get(key)) for r in lines], dtype=float))


def positive(values: np.ndarray) -> np.ndarray:
    """`values` with everything not finite and > 0 as NaN (a gap on a log axis)."""
    out = np.array(values, dtype=float)
    out[~(np.isfinite(out) & (out > 0))] = np.nan
    return out


def ema(values: np.ndarray, beta: float = EMA_BETA) -> np.ndarray:
    """Bias-corrected exponential moving average: m_k = beta m_(k-1) + (1 - beta) x_k over the
    finite values, divided by 1 - beta^k; a non-finite value gives NaN and leaves m unchanged."""
    out = np.full(len(values), np.nan)
    m, k = 0.0, 0
    for i, v in enumerate(values):
        if math.isfinite(v):
            m, k = beta * m + (1 - beta) * v, k + 1
            out[i] = m / (1 - beta ** k)
    return out


def steps_per_epoch(run: Run) -> float | None:
    """From the first epoch line: its step counts the steps of epochs 0..epoch."""
    for line in run.of("train"):
        step, epoch = number(line.get("step")), number(line.get("epoch"))
        if step > 0 and epoch >= 0:
            return step / (epoch + 1)
    return None


def _color(i: int) -> str:
    return f"C{i % 10}"


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained", dpi=100)


def _legend(fig: Figure, entries: list[tuple[str, dict]], title: str,
            loc: Literal["upper", "lower"]) -> None:
    """A figure legend right of the axes: one entry per (label, Line2D style)."""
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], label=label, **style) for label, style in entries]
    fig.legend(handles=handles, title=title, fontsize="small",
               loc="outside right upper" if loc == "upper" else "outside right lower")


def _run_legend(fig: Figure, runs: list[Run]) -> None:
    _legend(fig, [(r.label, {"color": _color(i)}) for i, r in enumerate(runs)], "run", "upper")


def build_loss(runs: list[Run]) -> Drawn:
    """Loss per step from the step lines (raw and EMA), or per epoch from the train lines;
    validation losses as markers; log y."""
    fig = _figure(9, 4.8)
    ax = fig.add_subplot()
    drawn, caption, kinds = False, [], set[str]()
    for i, run in enumerate(runs):
        color = _color(i)
        if run.of("step"):
            x, y = xy(run.of("step"), "loss")
            y = positive(y)
            ax.plot(x, y, color=color, lw=0.8, alpha=0.35, gid=f"{run.label}:raw")
            ax.plot(x, ema(y), color=color, lw=1.8, gid=f"{run.label}:ema")
            kinds.update(("raw", "ema"))
            drawn = True
        elif run.of("train"):
            x, y = xy(run.of("train"), "loss")
            ax.plot(x, positive(y), "o-", color=color, gid=f"{run.label}:train")
            caption.append(f"{run.label}: no step lines, so the per-epoch train loss")
            kinds.add("train")
            drawn = True
        if run.of("val"):
            x, y = xy(run.of("val"), "loss")
            ax.plot(x, positive(y), "x", color=color, ms=7, mew=2, gid=f"{run.label}:val")
            kinds.add("val")
            drawn = True
    if not drawn:
        return Drawn("loss", skipped="no step, train or val lines")
    gray = {"color": "0.2"}
    styles: dict[str, tuple[str, dict]] = {
        "raw": ("raw (mean since the previous step line)", {"color": "0.4", "lw": 0.8,
                                                            "alpha": 0.5}),
        "ema": (f"EMA (beta {EMA_BETA})", {**gray, "lw": 1.8}),
        "train": ("train, per epoch", {**gray, "marker": "o"}),
        "val": ("val", {**gray, "marker": "x", "ls": "", "mew": 2}),
    }
    _run_legend(fig, runs)
    _legend(fig, [styles[k] for k in styles if k in kinds], "curve", "lower")
    _log_y(ax)
    ax.set(xlabel="step", ylabel="loss", title="loss")
    ax.grid(True, which="both", alpha=0.3)
    return Drawn("loss", fig, caption=caption)


def _log_y(ax: Axes) -> None:
    data = [line.get_ydata() for line in ax.get_lines()]
    if any(np.isfinite(np.asarray(d, dtype=float)).any() for d in data):
        ax.set_yscale("log")


def build_accuracy(runs: list[Run]) -> Drawn:
    """Train and val accuracy per epoch. x = step / steps per epoch: epoch ends fall on whole
    numbers (epochs completed) and a mid-epoch validation between them."""
    fig = _figure(9, 4.8)
    ax = fig.add_subplot()
    drawn, caption = False, []
    for i, run in enumerate(runs):
        spe = steps_per_epoch(run)
        if spe is None:
            if run.of("val"):
                caption.append(f"{run.label}: no epoch finished yet, its val lines are left out")
            continue
        for split, style in (("train", "o-"), ("val", "s--")):
            if run.of(split):
                x, y = xy(run.of(split), "accuracy")
                ax.plot(x / spe, y, style, color=_color(i), ms=4, gid=f"{run.label}:{split}")
                drawn = True
    if not drawn:
        return Drawn("accuracy", skipped="no epoch finished yet (no train lines)")
    _run_legend(fig, runs)
    _legend(fig, [("train", {"color": "0.2", "marker": "o"}),
                  ("val", {"color": "0.2", "marker": "s", "ls": "--"})], "split", "lower")
    ax.set(xlabel="epochs completed", ylabel="accuracy", title="accuracy")
    ax.grid(True, alpha=0.3)
    return Drawn("accuracy", fig, caption=caption)


def build_lr(runs: list[Run]) -> Drawn:
    """The learning rate at every step that a train, val or step line reports."""
    fig = _figure(9, 4.2)
    ax = fig.add_subplot()
    drawn = False
    for i, run in enumerate(runs):
        points: dict[float, float] = {}
        for split in ("step", "train", "val"):
            for step, lr in zip(*xy(run.of(split), "lr"), strict=True):
                if math.isfinite(step) and math.isfinite(lr):
                    points.setdefault(step, lr)
        if points:
            steps = sorted(points)
            ax.plot(steps, [points[s] for s in steps], ".-", color=_color(i), ms=3,
                    gid=f"{run.label}:lr")
            drawn = True
    if not drawn:
        return Drawn("lr", skipped="no line reports a learning rate")
    _run_legend(fig, runs)
    ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    ax.grid(True, alpha=0.3)
    return Drawn("lr", fig)


def layer_names(runs: list[Run], keys: tuple[str, ...]) -> list[str]:
    """Layers that report any of `keys` in the layers lines, in model order (first seen)."""
    names: dict[str, None] = {}
    for run in runs:
        for line in run.of("layers"):
            layers = line.get("layers")
            if isinstance(layers, dict):
                for name, entry in layers.items():
                    if isinstance(entry, dict) and any(k in entry for k in keys):
                        names.setdefault(name, None)
    return list(names)


def layer_series(run: Run, layer: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of one layer's `key` over the layers lines that report it."""
    found = [(line.get("step"), line["layers"][layer][key]) for line in run.of("layers")
             if isinstance(line.get("layers"), dict)
             and isinstance(line["layers"].get(layer), dict) and key in line["layers"][layer]]
    return (np.array([number(s) for s, _ in found], dtype=float),
            np.array([number(v) for _, v in found], dtype=float))


def _chosen(names: list[str], wanted: list[str] | None) -> list[str]:
    return names if wanted is None else [n for n in names if n in wanted]


def build_update_ratio(runs: list[Run], wanted: list[str] | None = None) -> Drawn:
    """Each layer's update ratio over the layers lines, log y, the band [1e-4, 1e-2] shaded and
    1e-3 marked. A run without layers lines shows the whole model's ratio from its train lines
    (unless --layers asks for particular layers)."""
    names = _chosen(layer_names(runs, ("update_ratio",)), wanted)
    fig = _figure(9, 5)
    ax = fig.add_subplot()
    drawn, caption, whole = False, [], False
    for i, run in enumerate(runs):
        style = LINESTYLES[i % len(LINESTYLES)]
        if run.of("layers"):
            for j, name in enumerate(names):
                x, y = layer_series(run, name, "update_ratio")
                if len(x):
                    ax.plot(x, positive(y), ls=style, color=_color(j), lw=1.4,
                            gid=f"{run.label}:{name}")
                    drawn = True
        elif wanted is None and run.of("train"):
            x, y = xy(run.of("train"), "update_ratio")
            if np.isfinite(y).any():
                ax.plot(x, positive(y), ls=style, marker="o", color="k",
                        gid=f"{run.label}:model")
                caption.append(f"{run.label}: no layers lines, so the whole model's update "
                               f"ratio from the train lines (one point per epoch)")
                drawn = whole = True
    if not drawn:
        if wanted is not None and any(r.of("layers") for r in runs):
            why = f"none of --layers ({', '.join(wanted)}) reports an update ratio"
        elif any(r.of("layers") for r in runs):
            why = "no layer reports an update ratio in the layers lines"
        else:
            why = "no layers lines" + (" (and no update ratio in the train lines)"
                                       if wanted is None else "")
        return Drawn("update_ratio", skipped=why)
    ax.axhspan(*BAND, color="tab:green", alpha=0.12, gid="band")
    ax.axhline(TARGET, color="tab:green", ls="--", lw=1, gid="target")
    entries = [(name, {"color": _color(j)}) for j, name in enumerate(names)]
    if whole:
        entries.append(("whole model", {"color": "k", "marker": "o"}))
    _legend(fig, entries, "layer", "upper")
    _legend(fig, [(r.label, {"color": "0.2", "ls": LINESTYLES[i % len(LINESTYLES)]})
                  for i, r in enumerate(runs)], "run", "lower")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="update ratio |dW| / |W|",
           title=f"update ratio per layer (band {BAND[0]:g} to {BAND[1]:g}, {TARGET:g} marked)")
    ax.grid(True, which="both", alpha=0.3)
    return Drawn("update_ratio", fig, caption=caption)


def histogram(entry: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """(fractions, bin edges) of a layers entry's hist over hist_range, or None."""
    if not isinstance(entry, dict):
        return None
    hist, span = entry.get("hist"), entry.get("hist_range")
    if not (isinstance(hist, list) and hist and isinstance(span, list) and len(span) == 2):
        return None
    counts = np.array([number(c) for c in hist], dtype=float)
    lo, hi = number(span[0]), number(span[1])
    if not (np.isfinite(counts).all() and math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        return None
    total = counts.sum()
    return (counts / total if total > 0 else counts), np.linspace(lo, hi, len(counts) + 1)


def build_activations(runs: list[Run], wanted: list[str] | None = None) -> Drawn:
    """One row per layer: the activation histogram of each run's newest layers line (fraction
    of values per bin), and the activation mean +- std over the layers lines."""
    if not any(r.of("layers") for r in runs):
        return Drawn("activations", skipped="no layers lines")
    names = _chosen(layer_names(runs, ("hist", "act_mean")), wanted)
    if not names:
        why = "no layer reports a histogram or act_mean in the layers lines"
        if wanted is not None:
            why = f"none of --layers ({', '.join(wanted)}) reports a histogram or act_mean"
        return Drawn("activations", skipped=why)
    fig = _figure(11, 2.3 * len(names) + 0.8)
    axes = fig.subplots(len(names), 2, squeeze=False)
    newest = {r.label: r.of("layers")[-1] for r in runs if r.of("layers")}
    caption = ["newest layers line: " + ", ".join(
        f"{label} step {number(line.get('step')):g}" for label, line in newest.items())]
    for row, name in enumerate(names):
        left, right = axes[row]
        dead = []
        for i, run in enumerate(runs):
            line = newest.get(run.label)
            entry = line.get("layers", {}).get(name) if line else None
            shown = histogram(entry)
            if shown is not None:
                left.stairs(*shown, color=_color(i), lw=1.5, gid=f"{run.label}:{name}:hist")
            if isinstance(entry, dict) and "dead_frac" in entry:
                dead.append(f"{run.label} {100 * number(entry['dead_frac']):.0f}%")
            x, mean = layer_series(run, name, "act_mean")
            if len(x):
                right.plot(x, mean, color=_color(i), gid=f"{run.label}:{name}:mean")
                xs, std = layer_series(run, name, "act_std")
                if len(xs) == len(x) and np.array_equal(xs, x):
                    right.fill_between(x, mean - std, mean + std, color=_color(i), alpha=0.2)
        if not left.patches:
            left.text(0.5, 0.5, "no histogram", ha="center", va="center",
                      transform=left.transAxes)
        left.set_title(f"{name}: activations" + (f" (dead: {', '.join(dead)})" if dead else ""),
                       fontsize="medium")
        left.set_ylabel("fraction")
        right.set_title(f"{name}: mean +- std over steps", fontsize="medium")
        if not right.lines:
            right.text(0.5, 0.5, "no act_mean", ha="center", va="center",
                       transform=right.transAxes)
        for a in (left, right):
            a.grid(True, alpha=0.3)
    axes[-1][0].set_xlabel("activation value")
    axes[-1][1].set_xlabel("step")
    _legend(fig, [(r.label, {"color": _color(i)}) for i, r in enumerate(runs) if r.of("layers")],
            "run", "upper")
    return Drawn("activations", fig, caption=caption)
