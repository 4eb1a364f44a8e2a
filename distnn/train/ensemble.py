"""Evaluate an ensemble of checkpoints: the mean of the members' softmax probabilities.

Each member is loaded as `distnn evaluate` loads a checkpoint (evaluate_checkpoint.py: its own
config, model and normalisation from the file) and all are scored on one dataset split in the
fixed blocks of train/evaluate.py, so the numbers are the same on any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distnn.comm import Communicator
from distnn.data import Normalization, eval_indices, get_dataset, to_float
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.train.evaluate_checkpoint import fit_model, read_saved
from distnn.train.exact import gather_sum
from distnn.train.setup import rank_threads

TINY = 1e-300  # probabilities are clipped here before the log: an underflow costs ~690, not inf


@dataclass
class Member:
    """One loaded member: its file, its model and the normalisation it was trained with."""

    path: Path
    model: Sequential
    normalization: Normalization


def softmax64(scores: np.ndarray) -> np.ndarray:
    """scores (N, K) -> probabilities (N, K) float64: exp(s - max) / sum, per row (stable for
    any finite scores). A row with a non-finite score gives NaN probabilities, without a
    warning."""
    wide = scores.astype(np.float64)
    bad = ~np.isfinite(wide).all(axis=1)
    wide[bad] = 0.0
    wide -= wide.max(axis=1, keepdims=True)
    p = np.exp(wide)
    p /= p.sum(axis=1, keepdims=True)
    p[bad] = np.nan
    return p


def block_sums(probs: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """(sum over samples of -log p[true class], clipped at TINY; correct count) of one block
    of probabilities (N, K) with labels y (N,)."""
    rows = np.arange(len(y))
    p_true = np.maximum(probs[rows, y], TINY)  # NaN stays NaN
    right = (probs.argmax(axis=1) == y) & np.isfinite(probs).all(axis=1)  # NaN: never right
    return float(-np.log(p_true).sum()), int(np.count_nonzero(right))


def evaluate_ensemble(paths: list[Path], comm: Communicator, dataset: str | None, split: str,
                      data_dir: str | None, batch: int = 256) -> dict:
    """Collective: all ranks must call. Scores the members (checkpoint files) and their
    ensemble on `split` of `dataset` (default: the first member's training dataset, from its
    data_dir unless `data_dir` is given). Per sample, each member's softmax probabilities
    (float64), the ensemble's their mean. Returns {'dataset', 'split', 'n', 'ensemble':
    {'accuracy', 'loss'}, 'members': [{'path', 'accuracy', 'loss'}, ...]}; loss: the mean of
    -log(probability of the true class). A member that does not fit the dataset (another
    number of classes or image shape) is a CheckpointError naming it.

    Like train/evaluate.py: fixed blocks of `batch` samples, a contiguous run of them per rank
    (eval_indices over blocks), the blocks' sums gathered and added in block order: the same
    numbers, to the bit, on any number of ranks."""
    assert paths, "an ensemble needs at least one member"
    saved = [(Path(p), *read_saved(Path(p), comm)) for p in paths]
    first = saved[0][2]
    name = dataset or first.data.dataset
    data = get_dataset(name, split, data_dir or first.data.data_dir)
    members = [Member(path, fit_model(path, snap, cfg, data, name, split), snap.normalization)
               for path, snap, cfg in saved]
    n = len(data)
    blocks = -(-n // batch)
    mine = eval_indices(blocks, comm.rank, comm.size)
    # per block: the ensemble's loss sum and correct count, then each member's
    rows = np.zeros((len(mine), 2 * (1 + len(members))), dtype=np.float64)
    with nn_threads.limit(rank_threads(first.train.threads, comm.size)):
        for row, block in enumerate(mine):
            idx = np.arange(block * batch, min((block + 1) * batch, n), dtype=np.int64)
            images, y = data.read(idx), data.labels[idx]
            mean = np.zeros((len(idx), data.num_classes), np.float64)
            for k, m in enumerate(members):
                probs = softmax64(m.model.forward(to_float(images, m.normalization), False))
                rows[row, 2 * k + 2: 2 * k + 4] = block_sums(probs, y)
                mean += probs
            rows[row, :2] = block_sums(mean / len(members), y)
    sums = gather_sum(rows, int(mine[0]) if len(mine) else 0, blocks, comm) / max(n, 1)
    return {"dataset": name, "split": split, "n": n,
            "ensemble": {"accuracy": float(sums[1]), "loss": float(sums[0])},
            "members": [{"path": str(m.path), "accuracy": float(sums[2 * k + 3]),
                         "loss": float(sums[2 * k + 2])} for k, m in enumerate(members)]}
