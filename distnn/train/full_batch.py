"""Full-batch training with L-BFGS (`optimizer.name: lbfgs`): every evaluation is the loss and
gradient of the whole training split, one iteration is one "epoch" of the coordinator.

The training split is cut into ceil(n / train.global_batch) contiguous chunks as even as
possible (at most global_batch samples each), and the chunks into G contiguous groups:
G = train.groups with train.invariant (so a group's chunks, and what it sums, do not depend on
the number of ranks), else one group per rank.
Each rank computes the gradient of its groups chunk after chunk (float32 passes of the model,
added in float64 in chunk order), and one allreduce of a zero-filled (G, P + 2) table gives
every rank every group's row, which it adds in group order (exact.gather_sum): the same bits on
every rank, and with train.invariant the same bits on any number of ranks. The L1 and L2
penalties are added after, in float64. optim/lbfgs.py then takes the same step everywhere.

A stop request is seen between iterations: the run stops with the state after the last whole
iteration checkpointed, and resuming recomputes the loss and gradient there (the same bits).
"""

from __future__ import annotations

import time

import numpy as np

from distnn.data import split_bounds, to_float
from distnn.exit_codes import ExitCode
from distnn.optim import LBFGS
from distnn.train.exact import gather_sum
from distnn.train.loop import Coordinator
from distnn.train.signals import StopRequest
from distnn.train.step import _right, check_replicas, parameter_checksum


class FullBatch:
    """The full training split's mean loss (penalties included), its gradient over the
    trained parameters (float64) and the correct count, at the model's current parameters.
    Collective: all ranks must call."""

    def __init__(self, model, train, normalization, comm, loss: str, chunk: int, groups: int,
                 l1: float = 0.0, l2: float = 0.0):
        self.model, self.train, self.normalization, self.comm = model, train, normalization, comm
        self.loss, self.l1, self.l2 = loss, l1, l2
        self.n = len(train)
        count = -(-self.n // chunk)  # chunks of at most `chunk` samples
        self.chunks = [split_bounds(self.n, count, i) for i in range(count)]
        self.groups = max(1, min(groups, len(self.chunks)))
        first, last = split_bounds(self.groups, comm.size, comm.rank)
        self.first, self.mine = first, range(first, last)  # this rank's groups
        self.size = model.grads.size - model.train_offset
        self.rows = np.zeros((len(self.mine), self.size + 2), np.float64)
        self.inputs: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # chunk -> (x, y), cached
        self.mask = model.decay_mask[model.train_offset:].astype(bool)

    def chunk_range(self, group: int) -> range:
        return range(*split_bounds(len(self.chunks), self.groups, group))

    def batch(self, c: int) -> tuple[np.ndarray, np.ndarray]:
        if c not in self.inputs:
            idx = np.arange(*self.chunks[c])
            self.inputs[c] = (to_float(self.train.read(idx), self.normalization),
                              np.asarray(self.train.labels[idx], np.int64))
        return self.inputs[c]

    def __call__(self) -> tuple[float, np.ndarray, int]:
        model, off = self.model, self.model.train_offset
        self.rows[...] = 0.0
        for row, group in zip(self.rows, self.mine, strict=True):
            for c in self.chunk_range(group):
                x, y = self.batch(c)
                value, scores = model.forward_backward(x, y, self.loss, denom=self.n)
                row[:self.size] += model.grads[off:]
                row[self.size] += value
                row[self.size + 1] += _right(scores, y)
        total = gather_sum(self.rows, self.first, self.groups, self.comm)
        g = total[:self.size]
        f = float(total[self.size])
        if self.l1 or self.l2:
            w = model.params[off:][self.mask].astype(np.float64)
            f += self.l1 * float(np.add.reduce(np.abs(w)))
            f += 0.5 * self.l2 * float(np.add.reduce(w * w))
            g[self.mask] += self.l1 * np.sign(w) + self.l2 * w
        return f, g, int(total[self.size + 1])


class FullBatchCoordinator(Coordinator):
    """The coordinator of an `optimizer.name: lbfgs` run: each epoch is one L-BFGS iteration on
    the full training split (its train line: the full-batch loss and accuracy at the new point,
    `lr` the step length taken, `evals` the evaluations it took); validation, early stopping,
    checkpoints, signals and the final test as in every run. Converged: training is over."""

    def __init__(self, cfg, comm, parts, run_dir, metrics):
        super().__init__(cfg, comm, parts, run_dir, metrics)
        assert isinstance(self.optimizer, LBFGS)
        self.lbfgs: LBFGS = self.optimizer
        t = cfg.train
        self.objective = FullBatch(self.model, self.splits.train, self.normalization, comm,
                                   t.loss, t.global_batch, t.groups if t.invariant else comm.size,
                                   t.l1, t.l2)
        self.point: tuple[int, float, np.ndarray, int] | None = None  # (crc, f, g, correct)
        self.step_length = 0.0

    def lr(self) -> float:
        return self.step_length

    def epoch_lr(self) -> float:
        return self.step_length

    def finished(self) -> bool:
        return super().finished() or self.lbfgs.converged

    def evaluate(self) -> tuple[float, np.ndarray, int]:
        """f, g, correct at the current parameters (kept from the last iteration if they have
        not changed since: the same bits as computing them again)."""
        crc = parameter_checksum(self.model.params)
        if self.point is None or self.point[0] != crc:
            with self.model.spans.span("full_batch"):
                f, g, correct = self.objective()
            self.point = (crc, f, g, correct)
        return self.point[1:]

    def run_epoch(self, flag: StopRequest) -> int | None:
        s, model = self.state, self.model
        if flag.anywhere(self.comm):
            self.keeper.ensure_last(s)
            return ExitCode.RESUMABLE
        tick = time.perf_counter()
        f, g, correct = self.evaluate()
        seen: list[tuple[np.ndarray, int]] = []

        def evaluate() -> tuple[float, np.ndarray]:
            with model.spans.span("full_batch"):
                fx, gx, right = self.objective()
            seen.append((gx, right))
            return fx, gx

        x = model.params[model.train_offset:]
        before = x.copy()
        it = self.lbfgs.iterate(x, f, g, evaluate)
        if it.t:
            correct = next(right for gx, right in seen if gx is it.g)
            self.point = (parameter_checksum(model.params), it.f, it.g, correct)
        self.step_length = it.t
        before -= x
        self.last_update_ratio = float(np.linalg.norm(before)) / max(
            float(np.linalg.norm(x)), 1e-30)
        self.last_grad_norm = float(np.linalg.norm(it.g))
        n = self.objective.n
        s.step += 1
        s.step_in_epoch = 1
        s.epoch_loss, s.epoch_correct, s.epoch_count = it.f * n, correct, n
        s.epoch_seconds = time.perf_counter() - tick
        if s.initial_loss is None:
            s.initial_loss = f
        every = self.cfg.train.consistency_every
        if every and s.step % every == 0:
            check_replicas(model, self.comm, s.step)  # every replica took the same step
        if self.is_root and it.converged:
            self.metrics.add({"epoch": s.epoch, "step": s.step, "split": "lbfgs",
                              "converged": it.reason, "evals": self.lbfgs.evals})
        return None
