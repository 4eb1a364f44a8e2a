"""Exact, order-free sums of float32 gradients over groups and ranks: the same bits for any
number of ranks.

Each group's gradient is rounded to a fixed-point grid shared by everyone: the flat buffer is
cut into buckets of BUCKET elements; a bucket's grid step is 2**(E - T), where 2**E bounds the
largest magnitude of that bucket over every group of every rank (one max-allreduce of the
buckets' float32 bit patterns) and T = 51 - ceil(log2(groups)). The rounded values are
integers of at most 2**T in magnitude, held in float64, so any sum of them, in any order, on
one rank or across ranks (one float64 sum-allreduce), is exact (below 2**51); the total is then
scaled back and rounded once to float32. A float32 value within 2**(T - 23) of its bucket's
largest (2**24 for up to 16 groups) is on the grid exactly, so the result is the exact sum
rounded once, where float32 summation rounds at every addition. A bucket holding a NaN or an
infinity gives NaN. float64 rows (gradient checks) take the same path: their sum is then
deterministic and within 2**-T of the bucket's largest value per addend, not exact.
"""

from __future__ import annotations

import math

import numpy as np

from distnn.nn.jit import njit

BUCKET = 256
# Per float dtype: the signed integer of its width, the mask that clears the sign bit, and the
# bit pattern of infinity (NaN patterns are above it).
_BITS = {np.dtype(np.float32): (np.int32, 0x7FFFFFFF, 0x7F800000),
         np.dtype(np.float64): (np.int64, 0x7FFFFFFFFFFFFFFF, 0x7FF0000000000000)}


_ROUND = 1.5 * 2.0**52  # v + _ROUND - _ROUND: v rounded to the nearest integer (ties to even)


@njit
def bucket_max_bits(bits, mask, bucket, out):
    """out[b] = largest |value| in bucket b of every row, as bits: `bits` (rows, P) is float
    rows viewed as integers of their width, `mask` of the same type clears the sign; NaN and
    inf patterns are the largest of all."""
    rows, p = bits.shape
    for b in range(out.size):
        lo = b * bucket
        hi = min(lo + bucket, p)
        m = mask & 0
        for k in range(rows):
            row = bits[k]
            for i in range(lo, hi):
                v = row[i] & mask
                m = v if v > m else m
        out[b] = m


@njit
def quantize_sum(rows, bucket, scale, acc):
    """acc = sum over rows of round(row * scale[bucket]) (float64 integers of at most 2**T each,
    T <= 51, so the rounding trick below holds, and exact while the sum stays below 2**53).
    Bucket by bucket, so a bucket's sums stay in L1
    across the rows; the rounding is the add-and-subtract of 1.5 * 2**52 (vectorises)."""
    n, p = rows.shape
    for b in range(scale.size):
        s = scale[b]
        lo = b * bucket
        hi = min(lo + bucket, p)
        a = acc[lo:hi]
        a[:] = 0.0
        for k in range(n):
            row = rows[k, lo:hi]
            for i in range(hi - lo):
                a[i] += (np.float64(row[i]) * s + _ROUND) - _ROUND


@njit
def dequantize(acc, bucket, step, out):
    """out = acc * step[bucket], rounded to out's dtype (step NaN for a non-finite bucket)."""
    p = out.size
    for b in range(step.size):
        s = step[b]
        lo = b * bucket
        hi = min(lo + bucket, p)
        for i in range(lo, hi):
            out[i] = acc[i] * s


def headroom(groups: int) -> int:
    """T: bits below a bucket's bound that the grid keeps, for `groups` addends."""
    return 51 - max(math.ceil(math.log2(max(groups, 1))), 0)


def grid(max_bits: np.ndarray, groups: int, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(scale, step) float64 per bucket from the buckets' largest magnitudes (as the bits of
    `dtype`): values are multiplied by scale before rounding, the sum by step after."""
    top = max_bits.view(dtype).astype(np.float64)
    _, exp = np.frexp(top)  # top < 2**exp
    t = headroom(groups)
    # float64 rows only: a bucket below 2**(t - 1023) takes the grid of 2**(t - 1023) (the
    # largest finite scale; its values then keep fewer bits, the same way on every rank).
    exp = np.maximum(exp, t - 1023)
    scale = np.ldexp(1.0, t - exp)
    step = np.ldexp(1.0, exp - t)
    bad = max_bits >= _BITS[np.dtype(dtype)][2]
    scale[bad] = 0.0
    step[bad] = np.nan
    scale[max_bits == 0] = 0.0
    return scale, step


class ExactSum:
    """Sums rows of float32 (one per group) over the groups of every rank into one float32
    vector, exactly (see the module doc). `size`: the row length; `groups`: how many groups
    there are in all (it sets the headroom); `extra`: float64 slots carried in the same
    allreduce (each rank fills its own slots and leaves the others 0, so they arrive exact)."""

    def __init__(self, size: int, groups: int, comm, extra: int = 0, dtype=np.float32):
        self.size, self.groups, self.comm = size, groups, comm
        self.dtype = np.dtype(dtype)
        int_type, mask, _ = _BITS[self.dtype]
        self.mask = int_type(mask)
        self.max_bits = np.zeros(-(-size // BUCKET), int_type)
        self.buffer = np.zeros(size + extra, np.float64)
        self.extra = self.buffer[size:]

    def __call__(self, rows: np.ndarray, out: np.ndarray) -> None:
        """out (size,) float32 = the exact sum of `rows` (k, size) over every rank, rounded
        once. Fill `self.extra` before the call; it holds the reduced slots after.
        Collective: all ranks must call."""
        mx = self.max_bits
        acc = self.buffer[:self.size]
        if len(rows):
            bucket_max_bits(rows.view(mx.dtype), self.mask, BUCKET, mx)
        else:
            mx[...] = 0
        self.comm.allreduce_(mx, op="max")
        scale, step = grid(mx, self.groups, self.dtype)
        if len(rows):
            quantize_sum(rows, BUCKET, scale, acc)
        else:
            acc[...] = 0.0
        self.comm.allreduce_(self.buffer)
        dequantize(acc, BUCKET, step, out)


def gather_sum(rows: np.ndarray, first: int, total: int, comm) -> np.ndarray:
    """The sum over `total` groups of per-group float64 arrays, added in group order, the same
    bits on every rank and for any number of ranks: this rank holds groups first ..
    first + len(rows) - 1. Each rank writes its rows into its own slots of a zeroed
    (total, ...) array, one sum-allreduce fills in the rest (x + 0 is exact), then every
    rank adds the rows in order. Collective when comm is not None; local rows only if None."""
    shape = rows.shape[1:]
    if comm is None:
        table = rows
    else:
        table = np.zeros((total, *shape), np.float64)
        table[first:first + len(rows)] = rows
        comm.allreduce_(table)
    acc = np.zeros(shape, np.float64)
    for row in table:
        acc += row
    return acc
