"""The filters figure of `distnn plot`: a conv layer's weights as image tiles."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from distnn.watch.figures import Drawn, _figure

GAP = 1  # pixels between filter tiles
GAP_COLOR = (0.62, 0.74, 0.88)  # light blue: not a value any normalised tile can show


@dataclass
class Weights:
    """A conv layer's weights (KH, KW, C, F) and where they were read."""

    layer: str
    source: str
    W: np.ndarray
    notes: list[str] = field(default_factory=list)



def _normalised(w: np.ndarray) -> np.ndarray:
    finite = np.isfinite(w)
    if not finite.any():
        return np.full(w.shape, np.nan)
    lo, hi = float(w[finite].min()), float(w[finite].max())
    if hi == lo:
        return np.where(finite, 0.5, np.nan)
    return (w - lo) / (hi - lo)


def filter_mosaic(W: np.ndarray) -> np.ndarray:
    """Conv weights (KH, KW, C, F) as one image, GAP pixels of NaN between tiles, each filter
    normalised to [0, 1] over all its values. C = 3: an RGB tile per filter, C = 1: a gray tile
    per filter, both on a grid ceil(sqrt(F)) tiles wide, filter f at row f // width, column
    f % width, result (H, W, 3) / (H, W). Any other C: one row per filter, one gray tile per
    input channel, result (H, W)."""
    kh, kw, channels, count = W.shape
    w = np.asarray(W, dtype=float)
    if channels in (1, 3):
        cols = math.ceil(math.sqrt(count))
        rows = math.ceil(count / cols)
        place = [(f // cols, f % cols) for f in range(count)]
    else:
        rows, cols = count, channels
    shape: tuple[int, ...] = (rows * (kh + GAP) - GAP, cols * (kw + GAP) - GAP)
    if channels == 3:
        shape += (3,)
    out = np.full(shape, np.nan)
    for f in range(count):
        tile = _normalised(w[:, :, :, f])
        if channels in (1, 3):
            r, c = place[f]
            y, x = r * (kh + GAP), c * (kw + GAP)
            out[y:y + kh, x:x + kw] = tile if channels == 3 else tile[:, :, 0]
        else:
            for ch in range(channels):
                y, x = f * (kh + GAP), ch * (kw + GAP)
                out[y:y + kh, x:x + kw] = tile[:, :, ch]
    return out


def build_filters(weights: Weights | str) -> Drawn:
    """The conv layer's filters as tiles (filter_mosaic), gaps in light blue."""
    if isinstance(weights, str):
        return Drawn("filters", skipped=weights)
    mosaic = filter_mosaic(weights.W)
    rgb = mosaic if mosaic.ndim == 3 else np.repeat(mosaic[:, :, None], 3, axis=2)
    gap = ~np.isfinite(rgb).all(axis=2)
    rgb = np.where(gap[:, :, None], np.array(GAP_COLOR), np.nan_to_num(rgb))
    h, w = gap.shape
    scale = min(0.4, 10 / w, 12 / h)  # inches per tile pixel
    fig = _figure(max(4.0, w * scale), max(3.0, h * scale) + 0.9)
    ax = fig.add_subplot()
    ax.imshow(rgb, interpolation="nearest", gid="mosaic")
    ax.set_axis_off()
    kh, kw, channels, count = weights.W.shape
    layout = {3: "RGB tiles", 1: "gray tiles"}.get(
        channels, "one row per filter, one gray tile per input channel")
    ax.set_title(f"{weights.layer}: {count} filters {kh}x{kw}x{channels} from "
                 f"{weights.source}\n{layout}, each filter normalised to [0, 1]",
                 fontsize="medium")
    return Drawn("filters", fig, caption=[f"{weights.layer}.W from {weights.source}",
                                          *weights.notes])
