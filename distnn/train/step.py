"""One data-parallel optimizer step of one replica: local forward/backward, one fused allreduce,
optional clipping of the global gradient norm, the unchanged update rule. Gradient averaging sits
between backward and the update, as in Horovod's DistributedOptimizer: the update rules never see
the world size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from distnn.data import micro_shares, split_bounds
from distnn.nn.jit import njit
from distnn.nn.lockstep import Group, Lockstep
from distnn.nn.regularize import BatchNorm, Dropout, sample_keys
from distnn.train.buckets import BLOCK, Overlap, plan
from distnn.train.compress import Codec, ErrorFeedback
from distnn.train.errors import ReplicaMismatch
from distnn.train.exact import gather_sum

# Scalars reduced in the same allreduce as the gradients (trailing slots of model.grad_buffer).
LOSS, CORRECT, COUNT, STOP = range(4)
EXTRA_SLOTS = 4


def _right(scores: np.ndarray, y: np.ndarray) -> int:
    """How many rows of `scores` have their largest score at the label."""
    return int(np.count_nonzero(scores.argmax(axis=1) == y))


def _sums(results: list[tuple[float, int]], term: float) -> tuple[float, int]:
    """A micro-batch's loss (each group's plus `term`, its share of the L2 and L1 penalties)
    and correct count."""
    loss_sum, correct = 0.0, 0
    for value, right in results:
        if term:
            value += term
        loss_sum += value
        correct += right
    return loss_sum, correct


@dataclass
class StepResult:
    loss: float  # global mean loss of the step's global batch (data loss + L2 + L1)
    correct: int  # correctly classified samples of the global batch
    count: int  # samples in the global batch
    stop: bool  # some rank asked to stop (signal) before this step


@njit
def sum_of_squares(x: np.ndarray) -> float:
    """Sum of x*x in float64, one element after the other: the same bits on every CPU (no BLAS,
    no SIMD reordering), so every rank derives the same clipping factor."""
    acc = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        acc += v * v
    return acc


def clip_grad_norm_(grads: np.ndarray, max_norm: float) -> float:
    """Scale `grads` in place so that its L2 norm is at most `max_norm`; returns the norm
    before clipping."""
    norm = float(np.sqrt(sum_of_squares(grads)))
    if norm > max_norm:
        grads *= grads.dtype.type(max_norm / norm)
    return norm


class DataParallelStep:
    """Replica step. The model must be built with `extra_grad_slots=EXTRA_SLOTS`.
    `clip_grad_norm` > 0 clips the global (reduced) gradient to that norm before the update.
    A model with BatchNorm runs through nn/lockstep.py, so that a synced BatchNorm normalises
    with the statistics of the whole global (micro-)batch. Dropout masks are keyed by (`seed`,
    layer, step, dataset index): a sample's mask is the same on any rank (InvariantStep adds
    bitwise world-size invariance).
    `bucket_mb`: overlap the allreduce with the backward pass, in buckets of about that many
    MB (train/buckets.py), with the same result to the bit; None: one allreduce after it.
    `compress` "bf16"/"fp16": the gradients travel in 16 bits with error feedback
    (train/compress.py; the scalar slots in a small allreduce of their own).
    `l2`, `l1`: the loss gains l2/2 * sum(W^2) and l1 * sum(|W|) over the decayed weights
    (both: the elastic net), their gradients l2 * W and l1 * sign(W)."""

    def __init__(self, model, optimizer, comm, loss: str = "softmax", l2: float = 0.0,
                 grad_accum: int = 1, clip_grad_norm: float = 0.0, seed: int = 0,
                 bucket_mb: float | None = None, compress: str = "none", l1: float = 0.0):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.loss, self.l2, self.l1, self.grad_accum = loss, l2, l1, grad_accum
        self.clip_grad_norm, self.seed = clip_grad_norm, seed
        self.acc = np.zeros_like(model.grads) if grad_accum > 1 else None
        self.extra = model.grad_buffer[model.grads.size:]
        has_norm = any(isinstance(layer, BatchNorm) for layer in model.layers)
        self.lockstep: Lockstep | None = Lockstep(model) if has_norm else None
        self.dropouts = [(i, layer) for i, layer in enumerate(model.layers)
                         if isinstance(layer, Dropout)]
        self.stop_requested, self.filled = False, False
        self.overlap: Overlap | None = None
        self.feedback: ErrorFeedback | None = None
        if compress != "none":
            self._compressed(compress, bucket_mb)
        elif bucket_mb is not None:
            region = model.grad_buffer[model.train_offset:]
            buckets = plan(model, EXTRA_SLOTS, bucket_mb * 1e6, model.dtype.itemsize)
            self.overlap = Overlap(comm, region, buckets)
            model.after_layer = self.overlap.layer_done

    def _compressed(self, codec: str, bucket_mb: float | None) -> None:
        """16-bit buckets of the gradients (one bucket after the backward pass when bucket_mb
        is None); sizes count the bytes sent, 2 an element."""
        model = self.model
        region = model.grads[model.train_offset:]
        self.feedback = ErrorFeedback(Codec(codec), region.size)
        whole = 2.0 * (region.size + BLOCK)  # bytes of one bucket holding the whole region
        buckets = plan(model, 0, whole if bucket_mb is None else bucket_mb * 1e6, 2)
        self.overlap = Overlap(self.comm, region, buckets, self.feedback)
        if bucket_mb is not None:
            model.after_layer = self.overlap.layer_done

    def _arm(self, loss_sum: float, correct: int, n: int, earlier: bool = True):
        """For the last micro-batch under overlap: the hook that fills the scalar slots once
        the loss is known (before the backward pass, which starts the buckets). `earlier`:
        micro-batches before it this step (their sum, in self.acc, joins each bucket)."""
        if self.overlap is None:
            return None
        self.overlap.arm(self._add_earlier if self.acc is not None and earlier else None)

        def fill(value: float, right: int) -> None:
            self._fill(loss_sum + value, correct + right, n)
        return fill

    def _fill(self, loss_sum: float, correct: int, n: int) -> None:
        self.extra[:] = (loss_sum, correct, n, 1.0 if self.stop_requested else 0.0)
        self.filled = True

    def _add_earlier(self, lo: int, hi: int) -> None:
        """Add the earlier micro-batches' gradients to elements [lo, hi) of the region (its
        gradient part), just before they are sent: acc + g, as the step without overlap."""
        off, size = self.model.train_offset, self.model.grads.size
        lo, hi = off + lo, min(off + hi, size)
        if hi > lo:
            assert self.acc is not None
            self.model.grads[lo:hi] += self.acc[lo:hi]

    def _local_gradients(self, x, y, global_count: int, step: int = 0,
                         indices=None) -> tuple[float, int]:
        """Fill model.grads with this rank's share of the global-mean gradient."""
        model, n = self.model, len(y)
        indices = np.arange(n) if indices is None else indices
        if self.lockstep is not None:
            return self._with_batchnorm(x, y, global_count, step, indices)
        if n == 0:
            model.grads[...] = 0.0
            return 0.0, 0
        parts = min(self.grad_accum, n)
        loss_sum, correct = 0.0, 0
        for i in range(parts):  # micro-batches as even as possible, the first ones one longer
            sl = slice(*split_bounds(n, parts, i))
            for index, layer in self.dropouts:
                layer.keys = sample_keys(self.seed, index, step, indices[sl])
            last = i == parts - 1
            fill = self._arm(loss_sum, correct, n, earlier=i > 0) if last else None
            hook = None if fill is None else (
                lambda value, scores, fill=fill, y=y[sl]: fill(value, _right(scores, y)))
            value, scores = model.forward_backward(x[sl], y[sl], self.loss, self.l2, global_count,
                                                   hook, l1=self.l1)
            loss_sum += value
            correct += _right(scores, y[sl])
            if not (last and self.overlap is not None):  # else added bucket by bucket
                self._accumulate(i)
        for _, layer in self.dropouts:  # the model's own forward draws from its generator again
            layer.keys = None
        if self.acc is not None and self.overlap is None:
            model.grads[...] = self.acc
        return loss_sum, correct

    def _accumulate(self, micro: int) -> None:
        """Add the micro-batch's gradient (in model.grads) to the step's (grad_accum > 1)."""
        if self.acc is None:
            return
        if micro == 0:
            self.acc[...] = self.model.grads
        else:
            self.acc += self.model.grads

    def _with_batchnorm(self, x, y, global_count: int, step: int,
                        indices) -> tuple[float, int]:
        """Every rank runs grad_accum micro-batches (some maybe empty): x holds the rank's shares
        of the global micro-batches (data.micro_shares, as ShardSampler(accum=...) gives them),
        and micro-batch i of every rank together is the global micro-batch i whose statistics a
        synced BatchNorm takes (summed over ranks, one small allreduce per layer and pass)."""
        model, comm, parts, lockstep = self.model, self.comm, self.grad_accum, self.lockstep
        assert lockstep is not None  # a model with BatchNorm
        mine = micro_shares(global_count, parts, comm.size, comm.rank)
        if sum(b - a for a, b in mine) != len(y):
            raise ValueError(f"{len(y)} samples on rank {comm.rank}, expected "
                             f"{sum(b - a for a, b in mine)}: its shares of the {parts} "
                             f"micro-batches of {global_count} (ShardSampler(accum=...))")

        def reduce(table: np.ndarray, sync: bool) -> np.ndarray:
            total = gather_sum(table, 0, len(table), None)  # this rank's one row, if any
            return comm.allreduce_(total) if sync else total

        loss_sum, correct, a = 0.0, 0, 0
        for i in range(parts):
            lo, hi = split_bounds(global_count, parts, i)
            count, b = hi - lo, a + mine[i][1] - mine[i][0]
            groups = [Group(x[a:b], y[a:b], indices[a:b], model.grads)] if b > a else []
            if not groups:
                model.grads[...] = 0.0
            coef = self.l2 * (b - a) / global_count if self.l2 else 0.0
            # Each group's share of the L2 penalty (the weights do not change in the pass).
            term = coef * model.l2_penalty() if coef and groups else 0.0
            coef1 = self.l1 * (b - a) / global_count if self.l1 else 0.0
            if coef1 and groups:  # and of the L1 penalty
                term += coef1 * model.l1_penalty()
            last = i == parts - 1
            fill = self._arm(loss_sum, correct, len(y)) if last else None
            hook = None if fill is None else (
                lambda results, fill=fill, term=term: fill(*_sums(results, term)))
            added, right = _sums(lockstep.run(groups, count, global_count, step, self.seed,
                                              reduce, self.loss, coef, hook, coef1), term)
            loss_sum, correct = loss_sum + added, correct + right
            if not (last and self.overlap is not None):  # else added bucket by bucket
                self._accumulate(i)
            a = b
        if self.acc is not None and self.overlap is None:
            model.grads[...] = self.acc
        return loss_sum, correct

    def __call__(self, x, y, global_count: int, lr: float, stop_requested: bool,
                 apply: bool = True, step: int = 0, indices=None) -> StepResult:
        """Collective: all ranks must call, with their local shard of the same global batch.
        `step` and the dataset `indices` of x key the dropout masks (default: 0 and
        0..len(x)-1).
        apply=False: stop after the allreduce, leaving the parameters untouched; the caller
        checks the result and then calls `apply_update(lr)` (or drops the step)."""
        self.stop_requested, self.filled = stop_requested, False
        loss_sum, correct = self._local_gradients(x, y, global_count, step, indices)
        if not self.filled:  # no overlap, or no backward pass here (no samples on this rank)
            self._fill(loss_sum, correct, len(y))
        with self.model.spans.span("allreduce"):  # a frozen prefix has no place in it
            if self.overlap is not None:
                self.overlap.finish()
                if self.feedback is not None:  # the scalars are not compressed
                    self.comm.allreduce_(self.extra)
            else:
                self.comm.allreduce_(self.model.grad_buffer[self.model.train_offset:])
        result = StepResult(float(self.extra[LOSS]), int(round(float(self.extra[CORRECT]))),
                            int(round(float(self.extra[COUNT]))), bool(self.extra[STOP] > 0))
        if self.feedback is not None and not np.isfinite(result.loss):
            self.feedback.residual[...] = 0.0  # an error that is not a number is not carried
        if apply and np.isfinite(result.loss):
            self.apply_update(lr)
        return result

    def apply_update(self, lr: float) -> None:
        """Clip (if configured) and apply the reduced gradient. Every rank holds the same
        reduced buffer (the metric slots excluded: model.grads stops before them), so every
        rank clips by the same factor. Only the trained parameters, params[train_offset:],
        take part (a frozen prefix is never updated)."""
        off = self.model.train_offset
        grads = self.model.grads[off:]
        if self.clip_grad_norm > 0:
            clip_grad_norm_(grads, self.clip_grad_norm)
        self.optimizer.step(self.model.params[off:], grads, lr)


def parameter_checksum(params: np.ndarray) -> int:
    """CRC-32 of the raw bytes: equal on every rank iff the replicas are bit-identical."""
    return zlib.crc32(params.data.cast("B"))


def check_replicas(model, comm, step: int) -> None:
    """Collective: all ranks must call. Raises ReplicaMismatch on every rank if any differs."""
    crc = float(parameter_checksum(model.params))  # < 2**32: exact in float64
    both = np.array([crc, -crc], dtype=np.float64)
    comm.allreduce_(both, op="max")
    if both[0] != -both[1]:
        raise ReplicaMismatch(
            f"step {step}: model replicas differ across ranks (parameter CRC-32 ranges from "
            f"{int(-both[1])} to {int(both[0])}); a rank skipped or repeated an update"
        )
