"""L-BFGS with a strong-Wolfe line search, for full-batch training (distnn/train/full_batch.py).

"If you can afford to update using all the data at each iteration, try L-BFGS." One iteration:
the two-loop recursion turns the gradient into a direction from the last `history` pairs
(s = step taken, y = change of gradient), then a line search (Nocedal & Wright, Numerical
Optimization, algorithms 3.5 and 3.6, with cubic interpolation) finds a step length t that
satisfies the strong Wolfe conditions

    f(x + t d) <= f(x) + c1 t g.d          (sufficient decrease)
    |g(x + t d).d| <= c2 |g.d|              (curvature)

within `max_evals` evaluations of the full-batch loss and gradient.

Every number here is float64 arithmetic, in a fixed order, on what the caller gives: the reduced
full-batch loss and gradient, which every replica holds to the bit. Dot products are NumPy's
pairwise sums (never BLAS, whose threads would change the bits), so every replica, whatever its
thread count, takes the same step. The parameters themselves stay the model's float32: a trial
point is x0 + t d rounded to float32 once, and s is measured between the rounded points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from distnn.optim._check import BadValue, array_desc, integer, known_keys
from distnn.optim.hparams import HParam
from distnn.optim.rules import UpdateRule

# evaluate(): the loss and gradient (float64, the trained part) at the point just written into
# the parameters.
Evaluate = Callable[[], tuple[float, np.ndarray]]


@dataclass
class Iteration:
    """What one L-BFGS iteration did: the accepted step length t (0: no step), the loss and
    gradient there, how many evaluations it took, and why the run has converged ("" if it has
    not)."""

    t: float
    f: float
    g: np.ndarray
    evals: int
    reason: str = ""

    @property
    def converged(self) -> bool:
        return bool(self.reason)


class LBFGS(UpdateRule):
    """Full-batch L-BFGS. Not an update rule of the mini-batch loop (`step` refuses): the
    full-batch coordinator calls `iterate`. `history`: pairs kept (m); `max_evals`: loss and
    gradient evaluations per iteration; c1 < c2: the Wolfe constants; the run has converged when
    max |g| <= tolerance_grad or the loss changes by less than tolerance_change."""

    name = "lbfgs"
    hparams = (HParam("history", 10, low=1, integer=True),
               HParam("max_evals", 25, low=2, integer=True),
               HParam("c1", 1e-4, low=0.0, high=1.0, low_open=True, high_open=True),
               HParam("c2", 0.9, low=0.0, high=1.0, low_open=True, high_open=True),
               HParam("tolerance_grad", 1e-6, low=0.0),
               HParam("tolerance_change", 1e-10, low=0.0))
    history: int
    max_evals: int
    c1: float
    c2: float
    tolerance_grad: float
    tolerance_change: float
    buffers: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **hparams: Any) -> None:
        super().__init__(**hparams)
        if not self.c1 < self.c2:
            raise BadValue(f"lbfgs: c1 {self.c1:g} >= c2 {self.c2:g}, expected c1 < c2",
                           "c1", f"{self.c1:g} >= c2 {self.c2:g}, expected c1 < c2")
        self.s: list[np.ndarray] = []  # oldest first
        self.y: list[np.ndarray] = []
        self.converged = False
        self.evals = 0  # evaluations in all iterations so far

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        raise TypeError("lbfgs is full-batch: the mini-batch step does not run it "
                        "(distnn/train/full_batch.py calls LBFGS.iterate)")

    # -- the direction --------------------------------------------------------------------------
    def direction(self, g: np.ndarray) -> np.ndarray:
        """-H g by the two-loop recursion over the stored pairs (-g scaled to a first step of
        length at most 1 when there are none)."""
        if not self.s:
            return -g * min(1.0, 1.0 / max(_asum(g), 1e-300))
        q = g.copy()
        alphas = []
        for s, y in zip(reversed(self.s), reversed(self.y), strict=True):
            a = _dot(s, q) / _dot(y, s)
            q -= a * y
            alphas.append(a)
        s, y = self.s[-1], self.y[-1]
        q *= _dot(s, y) / _dot(y, y)  # the initial Hessian: gamma I
        for s, y, a in zip(self.s, self.y, reversed(alphas), strict=True):
            b = _dot(y, q) / _dot(y, s)
            q += (a - b) * s
        return -q

    def remember(self, s: np.ndarray, y: np.ndarray) -> None:
        """Keep the pair if it has positive curvature (y.s > 0), dropping the oldest beyond m."""
        if _dot(y, s) > 1e-10 * _dot(y, y):
            self.s.append(s)
            self.y.append(y)
            del self.s[:-self.history], self.y[:-self.history]

    # -- one iteration --------------------------------------------------------------------------
    def iterate(self, x: np.ndarray, f: float, g: np.ndarray, evaluate: Evaluate) -> Iteration:
        """One iteration from x (the float32 parameters, changed in place to the accepted point)
        with loss f and gradient g there; `evaluate()` scores whatever x holds."""
        x0 = x.astype(np.float64)
        if _amax(g) <= self.tolerance_grad:
            self.converged = True
            return Iteration(0.0, f, g, 0, "gradient below tolerance_grad")
        d = self.direction(g)
        gd = _dot(g, d)
        if not gd < 0:  # no descent along d (round-off): start again from -g
            self.s.clear()
            self.y.clear()
            d = self.direction(g)
            gd = _dot(g, d)

        def phi(t: float) -> tuple[float, np.ndarray, float]:
            np.copyto(x, x0 + t * d, casting="same_kind")
            fx, gx = evaluate()
            return fx, gx, _dot(gx, d)

        search = _LineSearch(phi, f, gd, self.c1, self.c2, self.max_evals,
                             self.tolerance_change / max(_amax(d), 1e-300))
        t, ft, gt = search.run(1.0)
        self.t += 1
        self.evals += search.evals
        if t == 0.0:  # no point of sufficient decrease: stay, and stop
            np.copyto(x, x0, casting="same_kind")
            self.converged = True
            return Iteration(0.0, f, g, search.evals, "the line search found no decrease")
        np.copyto(x, x0 + t * d, casting="same_kind")  # the accepted point, as evaluated
        self.remember(x.astype(np.float64) - x0, gt - g)
        reason = ""
        if _amax(gt) <= self.tolerance_grad:
            reason = "gradient below tolerance_grad"
        elif abs(ft - f) < self.tolerance_change:
            reason = "loss change below tolerance_change"
        it = Iteration(t, ft, gt, search.evals, reason)
        self.converged = it.converged
        return it

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """{"t", "evals", "converged", "pairs", "s" (pairs, P), "y" (pairs, P)} (no arrays
        before the first pair)."""
        out: dict[str, Any] = {"t": self.t, "evals": self.evals,
                               "converged": int(self.converged), "pairs": len(self.s)}
        if self.s:
            out["s"], out["y"] = np.stack(self.s), np.stack(self.y)
        return out

    def load_state_dict(self, d: Mapping[str, Any]) -> None:
        where = "lbfgs.load_state_dict"
        if not isinstance(d, Mapping):
            raise ValueError(f"{where}: state {type(d).__name__}, expected a dict")
        known_keys(where, d, ("t", "evals", "converged", "pairs", "s", "y"))
        missing = [k for k in ("t", "evals", "converged", "pairs") if k not in d]
        if missing:
            raise ValueError(f"{where}: missing key {missing[0]!r}")
        t, evals = integer(where, "t", d["t"]), integer(where, "evals", d["evals"])
        pairs = integer(where, "pairs", d["pairs"])
        if pairs > self.history:
            raise ValueError(f"{where}: {pairs} pairs, expected at most history {self.history}")
        s, y = d.get("s"), d.get("y")
        if pairs:
            for key, arr in (("s", s), ("y", y)):
                if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[0] != pairs \
                        or arr.dtype != np.float64:
                    raise ValueError(f"{where}: {key} is {array_desc(arr)}, expected "
                                     f"({pairs}, P) float64")
            assert isinstance(s, np.ndarray) and isinstance(y, np.ndarray)
            if s.shape != y.shape:
                raise ValueError(f"{where}: s {s.shape} and y {y.shape}, expected one shape")
        self.t, self.evals, self.converged = t, evals, bool(d["converged"])
        self.s = [row.copy() for row in s] if pairs and s is not None else []
        self.y = [row.copy() for row in y] if pairs and y is not None else []


class _LineSearch:
    """Strong Wolfe line search along d from t = 0 (loss f0, slope gd0 < 0): bracketing, then
    zoom with safeguarded cubic interpolation. `run(t1)` returns (t, f, g) of the accepted
    point; when `max_evals` run out, the lowest point of sufficient decrease seen, else t = 0.
    `min_width`: an interval narrower than this (in t) ends the search."""

    def __init__(self, phi, f0: float, gd0: float, c1: float, c2: float, max_evals: int,
                 min_width: float):
        self.phi, self.f0, self.gd0, self.c1, self.c2 = phi, f0, gd0, c1, c2
        self.max_evals, self.min_width, self.evals = max_evals, min_width, 0
        self.best: tuple[float, float, np.ndarray] | None = None  # lowest Armijo point

    def eval(self, t: float) -> tuple[float, np.ndarray, float]:
        self.evals += 1
        f, g, gd = self.phi(t)
        if not math.isfinite(f) or not math.isfinite(gd):
            return math.inf, g, math.nan
        if self.armijo(t, f) and (self.best is None or f < self.best[1]):
            self.best = (t, f, g)
        return f, g, gd

    def armijo(self, t: float, f: float) -> bool:
        return f <= self.f0 + self.c1 * t * self.gd0

    def curvature(self, gd: float) -> bool:
        return abs(gd) <= -self.c2 * self.gd0

    def fallback(self) -> tuple[float, float, np.ndarray]:
        if self.best is None:
            return 0.0, self.f0, np.zeros(0)
        return self.best

    def run(self, t: float) -> tuple[float, float, np.ndarray]:
        prev = (0.0, self.f0, self.gd0)
        while self.evals < self.max_evals:
            f, g, gd = self.eval(t)
            if not self.armijo(t, f) or (self.evals > 1 and f >= prev[1]):
                return self.zoom(prev, (t, f, gd))
            if self.curvature(gd):
                return t, f, g
            if gd >= 0:
                return self.zoom((t, f, gd), prev)
            nxt = cubic_min(prev, (t, f, gd), t + 0.01 * (t - prev[0]), 10.0 * t)
            prev, t = (t, f, gd), nxt
        return self.fallback()

    def zoom(self, lo: tuple[float, float, float], hi: tuple[float, float, float]):
        """lo: the end of lower loss (Armijo holds there); the minimiser lies between lo and hi.
        """
        while self.evals < self.max_evals and abs(hi[0] - lo[0]) > self.min_width:
            a, b = min(lo[0], hi[0]), max(lo[0], hi[0])
            t = cubic_min(lo, hi, a, b) if math.isfinite(hi[1]) else 0.5 * (a + b)
            if min(t - a, b - t) < 0.1 * (b - a):  # too close to an end: bisect instead
                t = 0.5 * (a + b)
            f, g, gd = self.eval(t)
            if not self.armijo(t, f) or f >= lo[1]:
                hi = (t, f, gd)
                continue
            if self.curvature(gd):
                return t, f, g
            if gd * (hi[0] - lo[0]) >= 0:
                hi = lo
            lo = (t, f, gd)
        return self.fallback()


def cubic_min(p: tuple[float, float, float], q: tuple[float, float, float],
              low: float, high: float) -> float:
    """The minimiser of the cubic through (t, f, f') at p and q, clipped to [low, high]; the
    middle of [low, high] where the cubic has none (or a value is not finite)."""
    (t1, f1, g1), (t2, f2, g2) = p, q
    if t1 == t2 or not all(math.isfinite(v) for v in (f1, g1, f2, g2)):
        return 0.5 * (low + high)
    d1 = g1 + g2 - 3.0 * (f1 - f2) / (t1 - t2)
    square = d1 * d1 - g1 * g2
    if square < 0:
        return 0.5 * (low + high)
    d2 = math.copysign(math.sqrt(square), t2 - t1)
    denom = g2 - g1 + 2.0 * d2
    if denom == 0:
        return 0.5 * (low + high)
    t = t2 - (t2 - t1) * (g2 + d2 - d1) / denom
    return min(max(t, low), high) if math.isfinite(t) else 0.5 * (low + high)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a.b as NumPy's pairwise sum of the products (no BLAS: the same bits on any thread
    count)."""
    return float(np.add.reduce(a * b))


def _asum(a: np.ndarray) -> float:
    return float(np.add.reduce(np.abs(a)))


def _amax(a: np.ndarray) -> float:
    return float(np.max(np.abs(a))) if a.size else 0.0
