"""Helpers the conv algorithms share.

Chunks of images run as tasks on distnn.nn.threads (one thread unless set otherwise); each
worker has its own scratch buffers ("<name><worker>"), each group of chunks its own partial
weight gradient, summed in group order (see threads.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
from numpy.typing import DTypeLike

from distnn.nn import kernels, threads
from distnn.nn.conv.algorithm import ConvLayer


def kept_input(layer: ConvLayer, x: np.ndarray) -> np.ndarray:
    """The input for backward to rebuild each chunk's columns (or tiles) from: it must not
    change before then. The model's own buffers do not; the caller's input array (first layer)
    might: there, a copy."""
    if layer.input_grad:
        return x
    keep = layer.buffer("x", x.shape)
    keep[...] = x
    return keep


def bias_grad(layer: ConvLayer, dout: np.ndarray, out: np.ndarray) -> np.ndarray:
    """dout as (N*Ho*Wo, F), masked where the fused ReLU's output is zero, and layer.g["b"],
    in one pass (the ReLU layer then passes dout through untouched). On the pool: the images
    in threads.groups, each group's column sums in float64, added in group order and rounded
    once."""
    n, f = dout.shape[0], layer.filters
    dout2d, out2d = dout.reshape(-1, f), out.reshape(-1, f)
    rows = dout2d.shape[0] // n  # per image
    groups = threads.groups(n)
    parts = layer.transient("db_groups", (len(groups), f), np.float64)

    def job(_w: int, g: int) -> None:
        r0, r1 = groups[g][0] * rows, groups[g][1] * rows
        kernels.relu_mask_bias_grad_(dout2d[r0:r1], out2d[r0:r1], parts[g], layer.fuse_relu)

    threads.run(job, range(len(groups)))
    total = layer.transient("db", (f,), np.float64)
    sum_groups(parts, total)
    layer.g["b"][...] = total
    return dout2d


def chunk_ranges(n: int, step: int) -> list[tuple[int, int]]:
    """[n0, n1) of each chunk of `step` images of a batch of n."""
    return [(n0, min(n, n0 + step)) for n0 in range(0, n, step)]


def per_worker(layer: ConvLayer, key: str, shape: tuple[int, ...], workers: int,
               dtype: DTypeLike | None = None, zero: bool = False) -> list[np.ndarray]:
    return [layer.buffer(f"{key}{w}", shape, dtype, zero=zero) for w in range(workers)]


def per_worker_transient(layer: ConvLayer, key: str, shape: tuple[int, ...],
                         workers: int) -> list[np.ndarray]:
    """per_worker, for buffers used only within the current call (Layer.transient)."""
    return [layer.transient(f"{key}{w}", shape) for w in range(workers)]


def accumulate(chunks: Sequence[tuple[int, int]], groups: Sequence[tuple[int, int]],
               acc: np.ndarray, part: Sequence[np.ndarray],
               work: Callable[[int, int, int, np.ndarray], None]) -> None:
    """Run work(worker, n0, n1, dest) for every chunk [n0, n1) on the pool, one group of
    chunks per task. `work` writes its chunk's partial weight gradient into dest: acc[g]
    for the group's first chunk, else the worker's part[w], which is then added to acc[g]
    (chunk order within the group)."""

    def job(w: int, g: int) -> None:
        first, stop = groups[g]
        for i in range(first, stop):
            work(w, *chunks[i], acc[g] if i == first else part[w])
            if i != first:
                acc[g] += part[w]

    threads.run(job, range(len(groups)))


# sum_groups cuts sums of more elements than this into pieces on the pool (each element is
# still the same sum in the same order: the same bits).
SUM_PIECE = 1 << 16


def sum_groups(parts: np.ndarray, out: np.ndarray) -> None:
    """out = parts[0] + parts[1] + ... in this order (whatever the thread count)."""
    if not (out.flags.c_contiguous and parts.flags.c_contiguous):  # no flat views to cut
        out[...] = parts[0]
        for part in parts[1:]:
            out += part
        return
    flat_parts, flat = parts.reshape(len(parts), -1), out.reshape(-1)
    pieces = chunk_ranges(flat.size, max(SUM_PIECE, -(-flat.size // threads.GROUPS)))

    def job(_w: int, i: int) -> None:
        e0, e1 = pieces[i]
        o = flat[e0:e1]
        o[...] = flat_parts[0, e0:e1]
        for part in flat_parts[1:]:
            o += part[e0:e1]

    threads.run(job, range(len(pieces)))
