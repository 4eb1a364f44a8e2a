"""Losses over class scores. Each returns (mean loss over the batch, d(loss)/d(scores))."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from distnn.nn.errors import ShapeError


def _check(scores: np.ndarray, y: np.ndarray, where: str) -> None:
    if scores.ndim != 2:
        raise ShapeError(f"{where}: scores shape {scores.shape}, expected (N, classes)")
    if y.shape != (scores.shape[0],):
        raise ShapeError(f"{where}: labels shape {y.shape}, expected ({scores.shape[0]},)")
    if y.size and (y.min() < 0 or y.max() >= scores.shape[1]):
        raise ShapeError(
            f"{where}: labels in [{y.min()}, {y.max()}], expected in [0, {scores.shape[1] - 1}]"
        )


def _non_finite(scores: np.ndarray) -> tuple[float, np.ndarray]:
    return float("nan"), np.zeros_like(scores)


def softmax_cross_entropy(scores: np.ndarray, y: np.ndarray,
                          denom: int | None = None) -> tuple[float, np.ndarray]:
    """scores: (N, K), y: (N,) ints -> (loss, dscores (N, K)).

    Subtracting each row's maximum, in float64, keeps exp() finite for any finite logits. A
    non-finite logit gives a NaN loss and a zero gradient, without a warning (the training step
    then skips the update). `denom` divides the summed loss (default N): a data-parallel worker
    passes the global batch size so that summing the workers' gradients gives the global mean.
    """
    _check(scores, y, "softmax_cross_entropy")
    n = scores.shape[0]
    denom = n if denom is None else denom
    if not np.isfinite(scores).all():
        return _non_finite(scores)
    wide = scores.astype(np.float64, copy=False)  # float32 logits of +-3e38 differ by 6e38
    shifted = wide - wide.max(axis=1, keepdims=True)
    log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_p = shifted - log_z
    rows = np.arange(n)
    loss = -float(log_p[rows, y].sum()) / max(denom, 1)
    dscores = np.exp(log_p)
    dscores[rows, y] -= 1
    dscores /= max(denom, 1)
    return loss, dscores.astype(scores.dtype, copy=False)


def svm_hinge(scores: np.ndarray, y: np.ndarray, delta: float = 1.0,
              denom: int | None = None) -> tuple[float, np.ndarray]:
    """Multiclass SVM: sum over j != y of max(0, s_j - s_y + delta). Returns (loss, dscores).
    Margins in float64; a non-finite score gives a NaN loss and a zero gradient."""
    _check(scores, y, "svm_hinge")
    n = scores.shape[0]
    denom = n if denom is None else denom
    if not np.isfinite(scores).all():
        return _non_finite(scores)
    rows = np.arange(n)
    wide = scores.astype(np.float64, copy=False)  # margins of float32 logits can pass 3.4e38
    margins = wide - wide[rows, y][:, None] + delta
    margins[rows, y] = 0
    pos = margins > 0
    loss = float(np.where(pos, margins, 0).sum()) / max(denom, 1)
    dscores = pos.astype(scores.dtype)
    dscores[rows, y] = -pos.sum(axis=1)
    dscores /= max(denom, 1)
    return loss, dscores


LOSSES: dict[str, Callable[..., tuple[float, np.ndarray]]] = {
    "softmax": softmax_cross_entropy, "svm": svm_hinge}
