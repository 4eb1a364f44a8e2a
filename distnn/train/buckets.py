"""Gradient buckets, and their allreduces started while the backward pass goes on.

A step reduces one flat region of the gradient buffer: the trained parameters' gradients
(grad_buffer[train_offset:P]) and the step's scalar slots after them. `plan` cuts it from its END
backwards (the last layers' gradients are the first to be final, as in DDP's reverse-order
buckets) into pieces of about `comm.bucket_mb` MB whose boundaries are multiples of BLOCK
elements from the region's start; the first bucket carries the scalar slots (they are known
before the backward pass starts). A bucket is final once backward has finished the lowest layer
whose parameters lie in it; the model's `after_layer` hook tells `Overlap`, which starts the
bucket's non-blocking allreduce (Communicator.iallreduce_) and tests the ones in flight.
Neighbouring pieces that become final at the same layer are one bucket: cutting one layer's
gradients would only add collectives (each has a fixed cost: about 40 ms through Ray's object
store across nodes), never overlap (DDP likewise never splits a parameter).

Every rank starts the buckets in the same order (bucket 0, 1, ...), on channel 1, whatever its
timing: the order MPI demands of non-blocking collectives. The sums are those of one big
allreduce cut in pieces: elementwise, so the result is the same bits as the allreduce of the
whole region. BLOCK is the exact sum's grid block (train/exact.py), so the invariant step's
per-block grids are those of the whole buffer too (train/exact_overlap.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from distnn.comm.base import Request
from distnn.nn.model import Sequential, offset_in
from distnn.train.compress import ErrorFeedback
from distnn.train.exact import BUCKET as BLOCK


@dataclass(frozen=True)
class Bucket:
    lo: int  # [lo, hi): elements of the region (the scalar slots included in bucket 0)
    hi: int
    ready: int  # the bucket is final once backward has finished layers[ready]


def layer_ranges(model: Sequential) -> list[tuple[int, int, int]]:
    """(layer index, first, end) of each layer's parameters in model.params, offsets relative
    to model.train_offset; trained layers only (the frozen prefix has no place in a step)."""
    out = []
    for i, layer in enumerate(model.layers):
        if i < model.backward_stop or not layer.p:
            continue
        offs = [(offset_in(model.params, a), a.size) for a in layer.p.values()]
        out.append((i, min(o for o, _ in offs) - model.train_offset,
                    max(o + n for o, n in offs) - model.train_offset))
    return out


def plan(model: Sequential, extra: int, bucket_bytes: float, itemsize: int) -> list[Bucket]:
    """The buckets of the region grad_buffer[train_offset:P] + `extra` scalar slots, in the
    order they are started (the region's end first). `bucket_bytes`: their size at
    `itemsize` bytes an element (rounded to whole BLOCKs, at least one)."""
    return cut(layer_ranges(model), model.params.size - model.train_offset,
               bucket_elements(bucket_bytes, itemsize), extra, len(model.layers))


def cut(ranges: list[tuple[int, int, int]], size: int, step: int, extra: int = 0,
        layers: int = 0) -> list[Bucket]:
    """Buckets of a region of `size` elements, in the order they are started (its end first).
    `ranges`: (layer index, first, end) of each trained layer's parameters in the region
    (layer_ranges); `step`: elements of a piece (a multiple of BLOCK); `extra` scalar slots
    ride in bucket 0; `layers`: how many layers the model has (a piece of padding alone, at
    the end, is final at once). Pieces final at the same layer are one bucket."""
    # Cuts on BLOCK boundaries: the first piece takes the region's ragged end.
    cuts = [size, max(0, (size - step) // BLOCK * BLOCK)] if size else [0]
    while cuts[-1] > 0:
        cuts.append(max(0, cuts[-1] - step))
    buckets: list[Bucket] = []
    ready = layers
    for k in range(len(cuts) - 1):
        lo, hi = cuts[k + 1], cuts[k]
        touching = [i for i, first, end in ranges if first < hi and end > lo]
        ready = min(touching) if touching else ready  # padding only: with the one before
        if buckets and buckets[-1].ready == ready:  # final at the same layer: one bucket
            buckets[-1] = Bucket(lo, buckets[-1].hi, ready)
        else:
            buckets.append(Bucket(lo, hi + (extra if k == 0 else 0), ready))
    if not buckets:  # no trained parameter: the slots alone
        buckets.append(Bucket(0, extra, ready))
    return buckets


def bucket_elements(bucket_bytes: float, itemsize: int) -> int:
    """Elements of a bucket of `bucket_bytes` bytes: whole BLOCKs, at least one."""
    return max(1, round(bucket_bytes / itemsize / BLOCK)) * BLOCK


class Overlap:
    """Starts the allreduce of each bucket of `region` (a view of the gradient buffer) once
    it is final, during the backward pass. Per step: `arm(prepare)` before the backward pass
    whose gradients are the step's last (the last micro-batch), `layer_done(i)` from the
    model's after_layer hook, `finish()` to start what is left and wait for all.
    `prepare(lo, hi)`, if given, runs just before a bucket is started (e.g. adds the earlier
    micro-batches' gradients to its part). `started`/`backward_end`: monotonic times of the
    last step, for the trace and the tests.
    With `feedback` (comm.compress), a bucket travels as the 16-bit codes of its gradients
    plus the rank's carried rounding error (train/compress.py), and `finish` decodes the
    reduced codes into the region."""

    def __init__(self, comm, region: np.ndarray, buckets: list[Bucket],
                 feedback: ErrorFeedback | None = None):
        self.comm, self.region, self.buckets = comm, region, buckets
        self.feedback = feedback
        self.codes = np.zeros(region.size if feedback else 0, np.uint16)
        self.requests: list[Request] = []
        self.prepare: Callable[[int, int], None] | None = None
        self.armed = False
        self.started: list[float] = []
        self.backward_end = 0.0

    def arm(self, prepare: Callable[[int, int], None] | None = None) -> None:
        self.prepare, self.armed = prepare, True
        self.requests, self.started = [], []

    def layer_done(self, i: int) -> None:
        if not self.armed:
            return
        self.backward_end = time.monotonic()
        buckets, requests = self.buckets, self.requests
        while len(requests) < len(buckets) and buckets[len(requests)].ready >= i:
            self._start()
        # MPI advances a collective only inside MPI calls. In order, and no further than the
        # first one still running: a request with two steps starts its second when tested,
        # and every rank must start those in the same order.
        for request in self.requests:
            if not request.test():
                break

    def _start(self) -> None:
        b = self.buckets[len(self.requests)]
        if self.prepare is not None:
            self.prepare(b.lo, b.hi)
        self.started.append(time.monotonic())
        if self.feedback is None:
            self.requests.append(self.comm.iallreduce_(self.region[b.lo:b.hi]))
            return
        codes = self.codes[b.lo:b.hi]
        self.feedback.encode(self.region[b.lo:b.hi], codes, b.lo)
        self.requests.append(self.comm.iallreduce_coded_(codes, self.feedback.codec.combine))

    def finish(self) -> None:
        """Start the buckets not started yet, wait for every one. Collective."""
        if not self.armed:  # a rank without samples had no backward pass: it starts them here
            self.arm(None)
        while len(self.requests) < len(self.buckets):
            self._start()
        for request in self.requests:
            request.wait()
        if self.feedback is not None:
            self.feedback.codec.decode(self.codes, self.region)
        self.armed = False


