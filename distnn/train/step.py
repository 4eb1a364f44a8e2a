"""One data-parallel optimizer step of one replica: local forward/backward, one fused allreduce,
optional clipping of the global gradient norm, the unchanged update rule. Gradient averaging sits
between backward and the update, as in Horovod's DistributedOptimizer: the update rules never see
the world size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

from distnn.nn.jit import njit
from distnn.train.errors import ReplicaMismatch

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
    `clip_grad_norm` > 0 clips the global (reduced) gradient to that norm before the update."""

    def __init__(self, model, optimizer, comm, loss: str = "softmax", l2: float = 0.0,
                 grad_accum: int = 1, clip_grad_norm: float = 0.0):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.loss, self.l2, self.grad_accum = loss, l2, grad_accum
        self.clip_grad_norm = clip_grad_norm
        self.acc = np.zeros_like(model.grads) if grad_accum > 1 else None
        self.extra = model.grad_buffer[model.grads.size:]

    def _local_gradients(self, x, y, global_count: int) -> tuple[float, int]:
        """Fill model.grads with this rank's share of the global-mean gradient."""
        model, n = self.model, len(y)
        if n == 0:
            model.grads[...] = 0.0
            return 0.0, 0
        parts = min(self.grad_accum, n)
        loss_sum, correct = 0.0, 0
        for i in range(parts):  # micro-batches as even as possible, the first ones one longer
            sl = slice(i * (n // parts) + min(i, n % parts),
                       (i + 1) * (n // parts) + min(i + 1, n % parts))
            value, scores = model.forward_backward(x[sl], y[sl], self.loss, self.l2, global_count)
            loss_sum += value
            correct += int(np.count_nonzero(scores.argmax(axis=1) == y[sl]))
            if self.acc is not None:
                if i == 0:
                    self.acc[...] = model.grads
                else:
                    self.acc += model.grads
        if self.acc is not None:
            model.grads[...] = self.acc
        return loss_sum, correct

    def __call__(self, x, y, global_count: int, lr: float, stop_requested: bool,
                 apply: bool = True, step: int = 0, indices=None) -> StepResult:
        """Collective: all ranks must call, with their local shard of the same global batch.
        (`step` and `indices` are the invariant step's; here the model's reseed keys dropout.)
        apply=False: stop after the allreduce, leaving the parameters untouched; the caller
        checks the result and then calls `apply_update(lr)` (or drops the step)."""
        loss_sum, correct = self._local_gradients(x, y, global_count)
        self.extra[:] = (loss_sum, correct, len(y), 1.0 if stop_requested else 0.0)
        self.comm.allreduce_(self.model.grad_buffer)
        result = StepResult(float(self.extra[LOSS]), int(round(float(self.extra[CORRECT]))),
                            int(round(float(self.extra[COUNT]))), bool(self.extra[STOP] > 0))
        if apply and np.isfinite(result.loss):
            self.apply_update(lr)
        return result

    def apply_update(self, lr: float) -> None:
        """Clip (if configured) and apply the reduced gradient. Every rank holds the same
        reduced buffer (the metric slots excluded: model.grads stops before them), so every
        rank clips by the same factor."""
        if self.clip_grad_norm > 0:
            clip_grad_norm_(self.model.grads, self.clip_grad_norm)
        self.optimizer.step(self.model.params, self.model.grads, lr)


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
