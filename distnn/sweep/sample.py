"""Random search: drawing a trial's values, and narrowing the space around the best trials.

Each trial draws from its own generator, seeded by (sweep seed, stage, trial index): the same
seed gives the same trials whatever the number of trials run in parallel or their order.
"""

from __future__ import annotations

import math

import numpy as np

from distnn.sweep.spec import Dimension

PAD = 0.25  # a narrowed range reaches this fraction of its width beyond the top trials' values
MIN_WIDTH = 0.05  # when the top trials agree on one value: this fraction of the old range


def draw(space: tuple[Dimension, ...], seed: int, stage: int, index: int) -> dict:
    """{key: value} for trial `index` of `stage`: uniform in log space for loguniform keys."""
    rng = np.random.default_rng([seed, stage, index])
    out: dict = {}
    for dim in space:
        if dim.kind == "choice":
            out[dim.key] = dim.values[int(rng.integers(len(dim.values)))]
        elif dim.kind == "randint":
            out[dim.key] = int(rng.integers(dim.values[0], dim.values[1], endpoint=True))
        elif dim.kind == "loguniform":
            low, high = math.log(dim.values[0]), math.log(dim.values[1])
            out[dim.key] = float(math.exp(rng.uniform(low, high)))
        else:
            out[dim.key] = float(rng.uniform(dim.values[0], dim.values[1]))
    return out


def narrow(space: tuple[Dimension, ...], top: list[dict]) -> tuple[Dimension, ...]:
    """The space around the params of the `top` trials (at least one): each range becomes the
    span of their values widened by PAD of that span on each side (in log space for loguniform
    keys; MIN_WIDTH of the old range if they agree), kept inside the old range; a choice keeps
    the choices they took, in the old order."""
    if not top:
        raise ValueError("narrow: no trial to narrow around")
    out = []
    for dim in space:
        taken = [p[dim.key] for p in top]
        if dim.kind == "choice":
            kept = tuple(v for v in dim.values if v in taken)
            out.append(Dimension(dim.key, "choice", kept))
            continue
        f = math.log if dim.log else float
        old_low, old_high = f(dim.values[0]), f(dim.values[1])
        low, high = min(f(v) for v in taken), max(f(v) for v in taken)
        pad = PAD * (high - low) if high > low else MIN_WIDTH * (old_high - old_low)
        low, high = max(old_low, low - pad), min(old_high, high + pad)
        if dim.log:
            low, high = math.exp(low), math.exp(high)
        if dim.kind == "randint":
            low, high = math.floor(low), math.ceil(high)
            if low == high:  # one integer left: keep a range of two
                low, high = (low - 1, high) if high == dim.values[1] else (low, high + 1)
            out.append(Dimension(dim.key, "randint", (int(low), int(high))))
        else:
            out.append(Dimension(dim.key, dim.kind, (float(low), float(high))))
    return tuple(out)
