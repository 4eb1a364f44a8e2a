"""Evaluation: every sample of a split counted exactly once across ranks, with the same sums
for any number of ranks."""

from __future__ import annotations

import numpy as np

from distnn.comm import Communicator
from distnn.data import Dataset, Normalization, eval_indices, to_float
from distnn.nn import LOSSES, Sequential
from distnn.train.exact import gather_sum


def evaluate(model: Sequential, dataset: Dataset, comm: Communicator,
             normalization: Normalization, loss: str = "softmax",
             batch: int = 256) -> dict:
    """Collective: all ranks must call. Returns {'loss', 'accuracy', 'n'} over the whole split.

    The split is cut into blocks of `batch` samples, the same blocks whatever the world size;
    each rank scores a contiguous run of blocks (data.eval_indices over blocks), and the
    blocks' loss sums and correct counts are gathered and added in block order: the same
    numbers, to the bit, on any number of ranks (never means of means).
    """
    n = len(dataset)
    blocks = -(-n // batch)
    mine = eval_indices(blocks, comm.rank, comm.size)
    fn = LOSSES[loss]
    rows = np.zeros((len(mine), 2), dtype=np.float64)
    for row, block in enumerate(mine):
        idx = np.arange(block * batch, min((block + 1) * batch, n), dtype=np.int64)
        x = to_float(dataset.read(idx), normalization)
        y = dataset.labels[idx]
        scores = model.forward(x, training=False)
        value, _ = fn(scores, y, denom=1)
        rows[row] = value, np.count_nonzero(scores.argmax(axis=1) == y)
    first = int(mine[0]) if len(mine) else 0
    loss_sum, correct = gather_sum(rows, first, blocks, comm)
    return {"loss": loss_sum / max(n, 1), "accuracy": correct / max(n, 1), "n": n}
