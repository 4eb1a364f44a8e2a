"""The four checks of `distnn sanity` (distnn/watch/sanity.py explains them and how their
limits were chosen). Each returns a `Check`: its one-line figure and whether it passed. They
take a model as training builds it and real training samples normalised as training does;
building those from a config is the command's part.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np

from distnn.nn import LOSSES, Sequential, rel_error
from distnn.nn.regularize import BatchNorm, Dropout, sample_keys
from distnn.optim import UpdateRule

LOSS_TOLERANCE = 0.10  # check 1: within 10 % of ln(C) (softmax) or C - 1 (SVM)
CLEAR_L2 = 1e-2  # check 2 when train.l2 is 0: adds about 1.2 to the quickstart loss at init
GRAD_L2 = 1e-3  # check 4: the small L2 in f, so that every weight gradient has that term too
GRAD_H = 1e-6  # check 4: the centred difference step (float64; sanity.py says why)
GRAD_THRESHOLD = 1e-5  # check 4: the largest relative error that passes (see sanity.py)
# check 4: a centred difference is rounded to about eps * |f| / h; an analytic value closer to
# it than that agrees with it, whatever rel_error's floor makes of the gap.
ROUNDING = float(np.finfo(np.float64).eps)
# check 4: noise added to the samples. A constant background (MNIST's) gives exactly equal
# values in a max-pool window; moving one input pixel breaks such ties in many windows at once,
# where f has no derivative and the backward pass's pick among tied entries is one of many
# valid ones. Noise of 1e-2 (pixels are normalised to std 1) leaves no exact tie.
TIE_NOISE = 1e-2
MAX_DRAWS = 3  # check 4: entries drawn per array at most, in multiples of the entries scored


@dataclass
class Check:
    name: str
    figure: str
    ok: bool

    def line(self) -> str:
        return f"{self.name:<16}{self.figure}: {'ok' if self.ok else 'FAILED'}"


@dataclass
class Samples:
    """Real training samples, normalised as training does: x (n, H, W, C) float32, y (n,),
    `indices` their dataset indices (dropout masks are keyed by them, as in training)."""

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray

    def head(self, n: int) -> Samples:
        return Samples(self.x[:n], self.y[:n], self.indices[:n])


@contextmanager
def fixed_masks(model: Sequential, seed: int, step: int, indices: np.ndarray,
                keep_state: bool = False) -> Iterator[None]:
    """Every dropout layer draws the masks training draws at `step` for these samples, the same
    on every forward pass in the block. BatchNorm running statistics are put back after it
    unless `keep_state` (a check changes nothing persistent of the model but what it means to)."""
    state = model.state.copy()
    dropouts = [(i, layer) for i, layer in enumerate(model.layers) if isinstance(layer, Dropout)]
    for index, layer in dropouts:
        layer.keys = sample_keys(seed, index, step, indices)
    try:
        yield
    finally:
        for _, layer in dropouts:
            layer.keys = None
        if not keep_state:
            model.state[...] = state


def expected_initial_loss(loss: str, classes: int) -> tuple[float, str]:
    """The loss of diffuse scores: ln(C) for softmax, C - 1 for the SVM (margin 1)."""
    if loss == "svm":
        return float(classes - 1), f"C-1 = {classes - 1}"
    return math.log(classes), f"ln({classes}) = {math.log(classes):.4f}"


def initial_loss(model: Sequential, batch: Samples, loss: str, seed: int) -> tuple[Check, float]:
    """1. The data loss (no regularisation) of the fresh model on a batch, in training mode as
    training's first step computes it, against ln(C) or C - 1. Also returns the loss."""
    expected, what = expected_initial_loss(loss, model.output_shape[-1])
    with fixed_masks(model, seed, 0, batch.indices):
        value, scores = model.forward_backward(batch.x, batch.y, loss)
        spread = float(np.std(scores, axis=1).mean())
    off = (value - expected) / expected
    ok = bool(abs(off) <= LOSS_TOLERANCE)  # NaN fails
    figure = (f"{value:.4f} on {len(batch.y)} samples, expected {what} within "
              f"{LOSS_TOLERANCE:.0%} ({off:+.1%}; score std {spread:.2f})")
    return Check("initial loss", figure, ok), value


def regularisation(model: Sequential, batch: Samples, loss: str, seed: int, l2: float,
                   data_loss: float, l1: float = 0.0) -> Check:
    """2. The loss with L2 (and L1 when `l1` > 0: the elastic net) is above the loss without
    (`data_loss`, check 1's value), everything else equal: same parameters, samples and dropout
    masks, BatchNorm state as before."""
    coef, source = (l2, "train.l2") if l2 > 0 else (CLEAR_L2, "train.l2 is 0: a clear value")
    with fixed_masks(model, seed, 0, batch.indices):
        value, _ = model.forward_backward(batch.x, batch.y, loss, l2=coef, l1=l1)
    ok = bool(value > data_loss)  # NaN fails
    also = f" and l1 {l1:g} (train.l1)" if l1 > 0 else ""
    figure = (f"loss {data_loss:.4f} -> {value:.4f} with l2 {coef:g} ({source}){also}, "
              f"{value - data_loss:+.4g}")
    return Check("regularisation", figure, ok)


def overfit(model: Sequential, optimizer: UpdateRule, lr_at: Callable[[int], float],
            samples: Samples, loss: str, seed: int, steps: int,
            clip: Callable[[np.ndarray], object] | None = None) -> Check:
    """3. Full-batch training on a few samples without L2, `optimizer` at rate `lr_at(step)`,
    until the evaluation-mode (predict) accuracy on them is 100 % or `steps` updates are done.
    Dropout masks and BatchNorm statistics evolve as in training."""
    n, name = len(samples.y), f"overfit {len(samples.y)}"
    # Without dropout or BatchNorm the training pass scores exactly what predict would: then
    # only a perfect training pass needs predict to confirm it.
    stochastic = any(isinstance(layer, (Dropout, BatchNorm)) for layer in model.layers)
    best, lrs = 0.0, list[float]()
    for step in range(steps + 1):
        with fixed_masks(model, seed, step, samples.indices, keep_state=True):
            value, scores = model.forward_backward(samples.x, samples.y, loss)
        if stochastic or np.all(scores.argmax(axis=1) == samples.y):
            accuracy = float(np.mean(model.predict(samples.x).argmax(axis=1) == samples.y))
            best = max(best, accuracy)
            if accuracy == 1.0:
                return Check(name, f"100 % of {n} samples after {step} steps "
                                   f"({optimizer.name}, lr {_span(lrs)}; loss {value:.4f})", True)
        if step == steps or not math.isfinite(value):
            break
        if clip is not None:
            clip(model.grads)
        lrs.append(lr_at(step))
        optimizer.step(model.params, model.grads, lrs[-1])
    return Check(name, f"{best * 100:.0f} % of {n} samples at best after {len(lrs)} steps "
                       f"({optimizer.name}, lr {_span(lrs)}; loss {value:.4g}), expected 100 %",
                 False)


def _span(lrs: list[float]) -> str:
    if not lrs:
        return "-"
    first, last = lrs[0], lrs[-1]
    return f"{first:.3g}" if math.isclose(first, last) else f"{first:.3g} to {last:.3g}"


@dataclass
class Entry:
    """One checked array: the largest relative error over its scored entries, how many were
    scored and how many skipped as kinks."""

    where: str
    error: float
    checked: int
    kinks: int


def gradient_check(model: Sequential, samples: Samples, loss: str, seed: int,
                   per_array: int = 10, l2: float = GRAD_L2, h: float = GRAD_H,
                   threshold: float = GRAD_THRESHOLD) -> tuple[Check, list[Entry]]:
    """4. The backward pass of a float64 `model` against centred differences of f = data loss
    + l2/2 ||W||^2 (dropout masks fixed, training mode) on the samples plus TIE_NOISE, at
    `per_array` random entries of every parameter array and of the input; the largest
    rel_error (over each array's scored entries) passes when at most `threshold`. An entry
    within ROUNDING of the analytic value scores 0. One whose error is above `threshold` but
    explained by a kink of f within +-h (a ReLU, max-pool or hinge switch) is skipped, counted
    and replaced (_check_array): explained when half the gap between the one-sided slopes,
    |f(x+h) - 2 f(x) + f(x-h)| / 2h (for one kink exactly the error it causes), or the change of
    the centred difference from h to h/10 (several kinks) is at least half its distance to the
    analytic value. A wrong gradient on a smooth stretch shows neither, and fails."""
    fn = LOSSES[loss]
    rng = np.random.default_rng(seed)
    x = samples.x.astype(np.float64) + rng.normal(0.0, TIE_NOISE, samples.x.shape)
    layers = model.layers
    first, first_grad = layers[0], layers[0].input_grad
    first.input_grad = True  # d(f)/d(input) too, for the input's entries
    try:
        with fixed_masks(model, seed, 0, samples.indices):
            _, d = fn(model.forward(x, training=True), samples.y)
            grad: np.ndarray | None = d
            for layer in reversed(layers):
                grad = layer.backward(cast(np.ndarray, grad))
            model.add_l2_(l2)
            analytic = {layer.name: {k: g.copy() for k, g in layer.g.items()} for layer in layers}
            dx = np.array(grad)
            inputs = [x]  # inputs[k]: what layer k takes at the unperturbed point
            for layer in layers[:-1]:
                inputs.append(np.array(layer.forward(inputs[-1], training=True)))

            def f_from(k: int) -> Callable[[], float]:
                """f, recomputed from layer k on (a nudge in layer k leaves the rest as is)."""
                def f() -> float:
                    out = inputs[k]
                    for layer in layers[k:]:
                        out = layer.forward(out, training=True)
                    penalty = sum(float(np.vdot(layer.p[name], layer.p[name]))
                                  for layer in layers for name in layer.decayed())
                    return fn(out, samples.y)[0] + 0.5 * l2 * penalty
                return f

            f0 = f_from(0)()
            entries = [_check_array("input", f_from(0), x, dx, f0, per_array, h, threshold,
                                    rng)]
            for k, layer in enumerate(layers):
                for name, p in layer.p.items():
                    entries.append(_check_array(f"{layer.name}.{name}", f_from(k), p,
                                                analytic[layer.name][name], f0, per_array, h,
                                                threshold, rng))
    finally:
        first.input_grad = first_grad
    worst = max(entries, key=lambda e: math.inf if math.isnan(e.error) else e.error)
    ok = bool(worst.error <= threshold)  # NaN fails
    where = worst.where if worst.error else "none: all within rounding"
    figure = (f"max rel error {worst.error:.2e} (worst {where}) over "
              f"{sum(e.checked for e in entries)} entries of {len(entries) - 1} parameter "
              f"arrays and the input, float64, h {h:g}, "
              f"{sum(e.kinks for e in entries)} at ReLU/max-pool kinks skipped and replaced; "
              f"threshold {threshold:g}")
    return Check("gradient check", figure, ok), entries


def _check_array(where: str, f: Callable[[], float], arr: np.ndarray, analytic: np.ndarray,
                 f0: float, count: int, h: float, threshold: float,
                 rng: np.random.Generator) -> Entry:
    """Centred differences on `count` random entries of `arr` (nudged in place) against
    `analytic`; an entry skipped as a kink is replaced by another, up to MAX_DRAWS x count."""
    order = rng.permutation(arr.size)[:MAX_DRAWS * count]
    ana = np.asarray(analytic, np.float64).reshape(-1)[order]
    num, bend = np.empty(order.size), np.empty(order.size)
    drift = np.zeros(order.size)  # |num at h - num at h/10|, taken for failing entries only
    measured = np.zeros(order.size, bool)

    def centred(j: int, step: float) -> tuple[float, float]:
        at = np.unravel_index(order[j], arr.shape)
        old = arr[at]
        arr[at] = old + step
        fp = f()
        arr[at] = old - step
        fm = f()
        arr[at] = old
        return fp, fm

    done, need = 0, min(count, order.size)
    while need > 0:
        for j in range(done, done + need):
            fp, fm = centred(j, h)
            num[j] = (fp - fm) / (2 * h)
            bend[j] = abs(fp - 2 * f0 + fm) / (2 * h)
        done += need
        failing, agree = _failing(num[:done], ana[:done], f0, h, threshold)
        for j in np.flatnonzero(failing & ~measured[:done]).tolist():
            fp, fm = centred(j, h / 10)
            drift[j], measured[j] = abs(num[j] - (fp - fm) / (h / 5)), True
        gap = np.abs(num[:done] - ana[:done])
        kink = failing & ((bend[:done] >= 0.5 * gap) | (drift[:done] >= 0.5 * gap))
        need = min(count - int((~kink).sum()), order.size - done)
    ana, num = ana[:done], num[:done]
    if not (np.isfinite(num).all() and np.isfinite(ana).all()):
        return Entry(where, math.nan, done, 0)
    keep = ~kink
    scored = np.where(agree, ana, num)
    error = rel_error(ana[keep], scored[keep]) if keep.any() else 0.0
    return Entry(where, error, int(keep.sum()), int(kink.sum()))


def _failing(num: np.ndarray, ana: np.ndarray, f0: float, h: float,
             threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """(failing, agreeing within rounding) per entry, each failing entry as rel_error scores
    it (a NaN entry is neither: it is reported as NaN)."""
    gap = np.abs(num - ana)
    agree = gap <= ROUNDING * max(abs(f0), 1.0) / h
    scale = max(float(np.max(np.abs(num), initial=0)), float(np.max(np.abs(ana), initial=0)))
    with np.errstate(invalid="ignore"):
        floor = np.maximum(np.abs(num) + np.abs(ana), 1e-4 * scale)
        return ~agree & (gap > threshold * floor), agree
