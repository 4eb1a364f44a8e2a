"""The exact sum (train/exact.py) bucket by bucket, started while the backward pass goes on.

ExactSum takes two collectives: a max-allreduce of every grid block's largest magnitude, then
the sum-allreduce of the values rounded to the blocks' grids. Both work block by block, and a
bucket (train/buckets.py) is a run of whole blocks, so a bucket can take both steps on its own
as soon as its gradients are final in every group: the grids, the rounded values and the sums
are those of the whole buffer, to the bit. The maxes go on channel 1 and the sums on channel 2,
each channel in bucket order on every rank; a bucket's sum starts once its max has arrived
(tested between layers, and at the end).
"""

from __future__ import annotations

import time

import numpy as np

from distnn.comm.base import Request
from distnn.train.buckets import BLOCK, Bucket
from distnn.train.exact import ExactSum, bucket_max_bits, dequantize, grid, quantize_sum


class ExactOverlap:
    """`exact`'s sum of `rows` (k, size) into `out`, bucket by bucket. Per step: `arm(rows)`
    before the last micro-batch's backward pass (every row is final once the layers of a
    bucket are done), `layer_done(i)` from the model's hook, `finish(out)`. The scalar slots
    (`exact.extra`) travel with bucket 0's sum: fill them before its max arrives (before
    the backward pass)."""

    def __init__(self, exact: ExactSum, buckets: list[Bucket]):
        self.exact, self.buckets = exact, buckets
        self.rows = np.zeros((0, exact.size), exact.dtype)
        self.maxes: list[Request] = []
        self.sums: list[Request] = []
        self.step = np.zeros(exact.max_bits.size)  # each block's grid step, float64
        self.armed = False
        self.started: list[float] = []
        self.backward_end = 0.0

    def arm(self, rows: np.ndarray) -> None:
        self.rows, self.armed = rows, True
        self.maxes, self.sums, self.started = [], [], []

    def _blocks(self, b: Bucket) -> tuple[int, int, int]:
        """(first block, end block, end element) of bucket b's gradient part."""
        end = min(b.hi, self.exact.size)
        return b.lo // BLOCK, -(-end // BLOCK), end

    def _start_max(self) -> None:
        b = self.buckets[len(self.maxes)]
        first, last, end = self._blocks(b)
        mx = self.exact.max_bits[first:last]
        if len(self.rows) and end > b.lo:
            bucket_max_bits(self.rows[:, b.lo:end].view(mx.dtype), self.exact.mask, BLOCK, mx)
        else:
            mx[...] = 0
        self.started.append(time.monotonic())
        self.maxes.append(self.exact.comm.iallreduce_(mx, op="max", channel=1))

    def _start_sum(self) -> None:
        k = len(self.sums)
        b = self.buckets[k]
        first, last, end = self._blocks(b)
        scale, self.step[first:last] = grid(self.exact.max_bits[first:last], self.exact.groups,
                                            self.exact.dtype)
        acc = self.exact.buffer[b.lo:end]
        if len(self.rows) and end > b.lo:
            quantize_sum(self.rows[:, b.lo:end], BLOCK, scale, acc)
        else:
            acc[...] = 0.0
        self.sums.append(self.exact.comm.iallreduce_(self.exact.buffer[b.lo:b.hi], channel=2))

    def _advance(self) -> None:
        """Start the sums whose maxes have arrived, in bucket order."""
        while len(self.sums) < len(self.maxes) and self.maxes[len(self.sums)].test():
            self._start_sum()
        for request in self.sums:
            request.test()

    def layer_done(self, i: int) -> None:
        if not self.armed:
            return
        self.backward_end = time.monotonic()
        while len(self.maxes) < len(self.buckets) and self.buckets[len(self.maxes)].ready >= i:
            self._start_max()
        self._advance()

    def finish(self, out: np.ndarray) -> None:
        """out (size,) = the exact sum over every rank, as ExactSum gives it; exact.extra
        holds the reduced slots after. Collective."""
        if not self.armed:  # no backward pass on this rank this step (no groups)
            self.arm(self.rows[:0])
        while len(self.maxes) < len(self.buckets):
            self._start_max()
        while len(self.sums) < len(self.buckets):
            self.maxes[len(self.sums)].wait()
            self._start_sum()
        for request in self.sums:
            request.wait()
        dequantize(self.exact.buffer[:self.exact.size], BLOCK, self.step, out)
        self.armed = False
