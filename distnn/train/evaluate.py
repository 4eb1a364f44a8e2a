"""Evaluation: every sample of a split counted exactly once across ranks."""

from __future__ import annotations

import numpy as np

from distnn.comm import Communicator
from distnn.data import Dataset, eval_indices, to_float
from distnn.nn import LOSSES, Sequential


def evaluate(model: Sequential, dataset: Dataset, comm: Communicator,
             normalization: tuple[np.ndarray, np.ndarray] | None, loss: str = "softmax",
             batch: int = 256) -> dict:
    """Collective: all ranks must call. Returns {'loss', 'accuracy', 'n'} over the whole split.

    Each rank scores its own share (data.eval_indices); sums of loss, correct and count are
    allreduced, never means of means.
    """
    indices = eval_indices(len(dataset), comm.rank, comm.size)
    fn = LOSSES[loss]
    sums = np.zeros(3, dtype=np.float64)
    for start in range(0, len(indices), batch):
        idx = indices[start:start + batch]
        x = to_float(dataset.read(idx), normalization)
        y = dataset.labels[idx]
        scores = model.forward(x, training=False)
        value, _ = fn(scores, y, denom=1)
        sums += np.array([value, np.count_nonzero(scores.argmax(axis=1) == y), len(idx)])
    comm.allreduce_(sums)
    n = int(sums[2])
    return {"loss": sums[0] / max(n, 1), "accuracy": sums[1] / max(n, 1), "n": n}

