"""One data-parallel optimizer step of one replica: local forward/backward, one fused allreduce,
the unchanged update rule. Gradient averaging sits between backward and the update, as in
Horovod's DistributedOptimizer: the update rules never see the world size.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import numpy as np

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


class DataParallelStep:
    """Replica step. The model must be built with `extra_grad_slots=EXTRA_SLOTS`."""

    def __init__(self, model, optimizer, comm, loss: str = "softmax", l2: float = 0.0,
                 grad_accum: int = 1):
        self.model, self.optimizer, self.comm = model, optimizer, comm
        self.loss, self.l2, self.grad_accum = loss, l2, grad_accum
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

    def __call__(self, x, y, global_count: int, lr: float, stop_requested: bool) -> StepResult:
        """Collective: all ranks must call, with their local shard of the same global batch."""
        loss_sum, correct = self._local_gradients(x, y, global_count)
        self.extra[:] = (loss_sum, correct, len(y), 1.0 if stop_requested else 0.0)
        self.comm.allreduce_(self.model.grad_buffer)
        result = StepResult(float(self.extra[LOSS]), int(round(float(self.extra[CORRECT]))),
                            int(round(float(self.extra[COUNT]))), bool(self.extra[STOP] > 0))
        if np.isfinite(result.loss):
            self.optimizer.step(self.model.params, self.model.grads, lr)
        return result


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
