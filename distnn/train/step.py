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
from distnn.train.errors import ReplicaMismatch
from distnn.train.exact import gather_sum

# Scalars reduced in the same allreduce as the gradients (trailing slots of model.grad_buffer).
LOSS, CORRECT, COUNT, STOP = range(4)
EXTRA_SLOTS = 4


@dataclass
class StepResult:
    loss: float  # global mean loss of the step's global batch (data loss + L2)
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
    bitwise world-size invariance)."""

    def __init__(self, model, optimizer, comm, loss: str = "softmax", l2: float = 0.0,
                 grad_accum: int = 1, clip_grad_norm: float = 0.0, seed: int = 0):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.loss, self.l2, self.grad_accum = loss, l2, grad_accum
        self.clip_grad_norm, self.seed = clip_grad_norm, seed
        self.acc = np.zeros_like(model.grads) if grad_accum > 1 else None
        self.extra = model.grad_buffer[model.grads.size:]
        has_norm = any(isinstance(layer, BatchNorm) for layer in model.layers)
        self.lockstep: Lockstep | None = Lockstep(model) if has_norm else None
        self.dropouts = [(i, layer) for i, layer in enumerate(model.layers)
                         if isinstance(layer, Dropout)]

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
            value, scores = model.forward_backward(x[sl], y[sl], self.loss, self.l2, global_count)
            loss_sum += value
            correct += int(np.count_nonzero(scores.argmax(axis=1) == y[sl]))
            self._accumulate(i)
        for _, layer in self.dropouts:  # the model's own forward draws from its generator again
            layer.keys = None
        if self.acc is not None:
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
            for value, right in lockstep.run(groups, count, global_count, step, self.seed,
                                             reduce, self.loss):
                if self.l2:
                    share = (b - a) / global_count
                    value += self.l2 * share * model.add_l2_(self.l2 * share)
                loss_sum += value
                correct += right
            self._accumulate(i)
            a = b
        if self.acc is not None:
            model.grads[...] = self.acc
        return loss_sum, correct

    def __call__(self, x, y, global_count: int, lr: float, stop_requested: bool,
                 apply: bool = True, step: int = 0, indices=None) -> StepResult:
        """Collective: all ranks must call, with their local shard of the same global batch.
        `step` and the dataset `indices` of x key the dropout masks (default: 0 and
        0..len(x)-1).
        apply=False: stop after the allreduce, leaving the parameters untouched; the caller
        checks the result and then calls `apply_update(lr)` (or drops the step)."""
        loss_sum, correct = self._local_gradients(x, y, global_count, step, indices)
        self.extra[:] = (loss_sum, correct, len(y), 1.0 if stop_requested else 0.0)
        with self.model.spans.span("allreduce"):  # a frozen prefix has no place in it
            self.comm.allreduce_(self.model.grad_buffer[self.model.train_offset:])
        result = StepResult(float(self.extra[LOSS]), int(round(float(self.extra[CORRECT]))),
                            int(round(float(self.extra[COUNT]))), bool(self.extra[STOP] > 0))
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
