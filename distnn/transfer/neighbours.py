"""The math of the k-nearest-neighbour baseline (`distnn knn`): distances of a block of queries
to a block of reference samples, the k nearest by (distance, reference index), the merge of
candidate lists, and the vote. No communication, no data files: plain float64 arrays.

Neighbour order is lexicographic in (distance, global reference index): among equal distances
the lower index comes first, so the k nearest do not depend on how the reference set is cut into
shards. Distances are float64; on integer data (raw pixels) both L1 and squared L2 are exact
integers, so every shard and every merge sees the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from distnn.nn.jit import njit

DISTANCES = ("l2", "l1")
L1_TILE = 64  # reference rows per tile of the L1 kernel (64 x D float64: L2-cache sized)


def flat64(samples: np.ndarray) -> np.ndarray:
    """(n, ...) samples of any numeric dtype -> (n, D) float64, each sample flattened."""
    return np.asarray(samples, dtype=np.float64).reshape(len(samples), -1)


def squared_norms(rows: np.ndarray) -> np.ndarray:
    """(n, D) float64 -> (n,) float64: the squared Euclidean norm of each row."""
    return np.einsum("ij,ij->i", rows, rows)


@njit
def _l1_kernel(queries, reference, out):
    """out[i, j] = sum_t |queries[i, t] - reference[j, t]|, summed in order t = 0, 1, ...;
    (Q, D), (N, D) -> out (Q, N). L1_TILE reference rows at a time are transposed into a
    scratch tile, so the innermost loop runs over reference rows (no reduction: it vectorises
    without reordering any sum)."""
    dims = queries.shape[1]
    tile = np.empty((dims, L1_TILE))
    acc = np.empty(L1_TILE)
    for j0 in range(0, reference.shape[0], L1_TILE):
        m = min(L1_TILE, reference.shape[0] - j0)
        for t in range(dims):
            for jj in range(m):
                tile[t, jj] = reference[j0 + jj, t]
        for i in range(queries.shape[0]):
            acc[:m] = 0.0
            for t in range(dims):
                x = queries[i, t]
                for jj in range(m):
                    acc[jj] += abs(x - tile[t, jj])
            out[i, j0:j0 + m] = acc[:m]


def distances(queries: np.ndarray, reference: np.ndarray, reference_sq: np.ndarray | None,
              distance: str) -> np.ndarray:
    """(Q, N) float64 distances of queries (Q, D) to reference rows (N, D), both float64.

    "l2": squared Euclidean, ||q||^2 + ||r||^2 - 2 q.r from one GEMM, clamped at 0 (rounding
    can make it slightly negative on float data); reference_sq: (N,) squared_norms(reference),
    computed once per shard by the caller (computed here if None).
    "l1": sum of absolute differences (a Numba kernel, not a GEMM).
    """
    if distance == "l1":
        out = np.empty((len(queries), len(reference)), dtype=np.float64)
        _l1_kernel(np.ascontiguousarray(queries), np.ascontiguousarray(reference), out)
        return out
    if distance != "l2":
        raise ValueError(f"distance {distance!r}; expected one of {', '.join(DISTANCES)}")
    if reference_sq is None:
        reference_sq = squared_norms(reference)
    out = queries @ reference.T
    out *= -2.0
    out += squared_norms(queries)[:, None]
    out += reference_sq[None, :]
    return np.maximum(out, 0.0, out=out)


@njit
def _after(d, i, a, b):
    """Whether entry a comes after entry b in (distance, index) order (d, i: 1-D arrays)."""
    return d[a] > d[b] or (d[a] == d[b] and i[a] > i[b])


@njit
def _sift_down(d, i, size):
    """Restore the max-heap (by (distance, index)) of d[:size], i[:size] below its root."""
    p = 0
    while True:
        c = 2 * p + 1
        if c >= size:
            return
        if c + 1 < size and _after(d, i, c + 1, c):
            c += 1
        if not _after(d, i, c, p):
            return
        d[p], d[c] = d[c], d[p]
        i[p], i[c] = i[c], i[p]
        p = c


@njit
def _smallest_kernel(dist, offset, out_d, out_i):
    """Per row of dist (Q, N): the out_d.shape[1] = k smallest finite entries by (distance,
    index), index = offset + column, ascending, into out_d (Q, k) and out_i (Q, k); slots left
    over (fewer than k finite entries) hold (+inf, -1). A max-heap of the k best so far: the
    columns are scanned in increasing index order, so an entry equal in distance to the heap's
    worst comes after it and is rejected; +inf (excluded) and NaN entries never enter."""
    k = out_d.shape[1]
    for r in range(dist.shape[0]):
        d = out_d[r]
        i = out_i[r]
        d[:] = np.inf
        i[:] = -1
        for j in range(dist.shape[1]):
            x = dist[r, j]
            if x < d[0]:
                d[0] = x
                i[0] = offset + j
                _sift_down(d, i, k)
        for end in range(k - 1, 0, -1):  # heap sort: the worst goes to the end, ascending
            d[0], d[end] = d[end], d[0]
            i[0], i[end] = i[end], i[0]
            _sift_down(d, i, end)


def smallest(dist: np.ndarray, k: int, offset: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each row of dist (Q, N) float64 by (distance, offset + column):
    (distances (Q, k) float64, indices (Q, k) int64), ascending. Entries that are +inf (points
    excluded by the caller) are never chosen; unused slots are (+inf, -1)."""
    out_d = np.empty((dist.shape[0], k), dtype=np.float64)
    out_i = np.empty((dist.shape[0], k), dtype=np.int64)
    _smallest_kernel(np.ascontiguousarray(dist), offset, out_d, out_i)
    return out_d, out_i


def merge(dist: np.ndarray, index: np.ndarray, label: np.ndarray,
          k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k first of each row's candidates (Q, M) in (distance, index) order: (distances,
    indices, labels), each (Q, k) in that order. Inputs: distances, indices and labels of the
    candidates (Q, M), any dtype for index and label (float64 from an exchange buffer is fine);
    unused candidates are (+inf, -1)."""
    order = np.lexsort((index, dist), axis=-1)[:, :k]
    return (np.take_along_axis(dist, order, axis=-1), np.take_along_axis(index, order, axis=-1),
            np.take_along_axis(label, order, axis=-1))


def vote(labels: np.ndarray) -> np.ndarray:
    """labels (Q, k) int of each query's k nearest, nearest first -> (Q,) int64 prediction: the
    most frequent label; a tie goes to the tied label whose nearest member comes first."""
    labels = np.asarray(labels, dtype=np.int64)
    rows = np.arange(labels.shape[0])[:, None]
    counts = np.zeros((labels.shape[0], int(labels.max(initial=0)) + 1), dtype=np.int64)
    np.add.at(counts, (np.broadcast_to(rows, labels.shape), labels), 1)
    votes = counts[rows, labels]  # (Q, k): how many of the k share each neighbour's label
    first = np.argmax(votes == votes.max(axis=1, keepdims=True), axis=1)
    return labels[rows[:, 0], first]


def choose_k(ks: Sequence[int], accuracies: np.ndarray) -> int:
    """The k (of ks) with the best accuracy (accuracies[j] is ks[j]'s); ties to the smallest k."""
    best = max(accuracies)
    return min(k for k, a in zip(ks, accuracies, strict=True) if a == best)
