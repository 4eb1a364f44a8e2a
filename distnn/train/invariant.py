"""The world-size invariant step: the same parameters, to the bit, on any number of ranks.

The global batch is cut into `train.groups` groups (distnn.data.group_plan), a number that does
not depend on the ranks or the threads; each rank computes the gradients of its groups, each on
its own (distnn/nn/lockstep.py, with the whole global batch's BatchNorm statistics and dropout
masks keyed by sample and step), and the groups' gradients are summed exactly and in an
order-free way (distnn/train/exact.py). The loss and correct count of every group travel in the
same allreduce and are added in group order. So what each group computes, and every sum, is
the same whatever the world size: 1, 2 or 16 ranks take the same path, step after step, and a
checkpoint written by N ranks resumes on any other number.
"""

from __future__ import annotations

import numpy as np

from distnn.data import group_plan, micro_counts
from distnn.nn.lockstep import Group, Lockstep
from distnn.nn.model import abs_sum
from distnn.train import buckets
from distnn.train.exact import ExactSum, gather_sum
from distnn.train.exact_overlap import ExactOverlap
from distnn.train.step import DataParallelStep, StepResult, sum_of_squares


class InvariantStep(DataParallelStep):
    """Replica step with world-size invariant results. `groups`: the fixed number of groups of
    every global batch (at least the number of ranks); `seed` keys the dropout masks. L2 and
    L1 (`l2`, `l1`) are added once, after the exact sum."""

    def __init__(self, model, optimizer, comm, loss: str = "softmax", l2: float = 0.0,
                 grad_accum: int = 1, clip_grad_norm: float = 0.0, groups: int = 16,
                 seed: int = 0, bucket_mb: float | None = None, l1: float = 0.0):
        super().__init__(model, optimizer, comm, loss, l2, 1, clip_grad_norm, seed, l1=l1)
        self.accum, self.groups = grad_accum, groups
        self.lockstep = Lockstep(model)  # with or without BatchNorm: one group, one replica
        # Per group: loss sum, correct, count; then the stop flag.
        # Only the trained parameters' gradients are summed (a frozen prefix has none).
        self.sum = ExactSum(model.grads.size - model.train_offset, groups, comm,
                            extra=3 * groups + 1, dtype=model.dtype)
        self.rows = np.zeros((0, model.grads.size), model.dtype)
        self.exact_overlap: ExactOverlap | None = None
        if bucket_mb is not None:  # the sum bucket by bucket, during the backward pass
            # Sizes in bytes sent: the sum travels in float64.
            cuts = buckets.plan(model, self.sum.extra.size, bucket_mb * 1e6,
                                self.sum.buffer.itemsize)
            self.exact_overlap = ExactOverlap(self.sum, cuts)
            model.after_layer = self.exact_overlap.layer_done

    def _rows(self, k: int) -> np.ndarray:
        if self.rows.shape[0] < k:
            self.rows = np.zeros((k, self.model.grads.size), self.model.dtype)
        return self.rows[:k]

    def __call__(self, x, y, global_count: int, lr: float, stop_requested: bool,
                 apply: bool = True, step: int = 0, indices=None) -> StepResult:
        """Collective: all ranks must call, with their groups of the same global batch (as
        ShardSampler(groups=...).local_indices gives them) and their dataset `indices`
        (dropout keys); `step` is the global step (dropout keys too)."""
        comm = self.comm
        plan = [[g for g in micro if g[2] > g[1]]  # no empty group (a last, short batch)
                for micro in group_plan(global_count, self.groups, self.accum, comm.size,
                                        comm.rank)]
        mine = [g for micro in plan for g in micro]
        rows = self._rows(len(mine))
        extra = self.sum.extra
        extra[...] = 0.0
        extra[-1] = 1.0 if stop_requested else 0.0
        if indices is None:
            indices = np.arange(len(y))
        counts = micro_counts(global_count, self.groups, self.accum)
        last = max(i for i, c in enumerate(counts) if c > 0)
        off = self.model.train_offset
        pos, k = 0, 0
        for m, (micro, count) in enumerate(zip(plan, counts, strict=True)):
            if count == 0:
                continue
            groups: list[Group] = []
            for _, a, b in micro:
                sl = slice(pos, pos + b - a)
                groups.append(Group(x[sl], y[sl], indices[sl], rows[k + len(groups)]))
                pos += b - a
            first = micro[0][0] if micro else 0

            def reduce(table, sync, first=first):
                return gather_sum(table, first, self.groups, comm if sync else None)

            def fill(results, micro=micro):  # before the backward pass starts any bucket
                for (gid, a, b), (value, correct) in zip(micro, results, strict=True):
                    extra[3 * gid:3 * gid + 3] = (value, correct, b - a)

            if m == last and self.exact_overlap is not None:
                self.exact_overlap.arm(rows[:, off:])
            assert self.lockstep is not None  # set in __init__
            self.lockstep.run(groups, count, global_count, step, self.seed, reduce, self.loss,
                              before_backward=fill)
            k += len(groups)
        with self.model.spans.span("allreduce"):
            if self.exact_overlap is not None:
                self.exact_overlap.finish(self.model.grads[off:])
            else:
                self.sum(rows[:, off:], self.model.grads[off:])
        per_group = extra[:-1].reshape(self.groups, 3)
        loss_sum, right, total = 0.0, 0.0, 0.0
        for value, good, n in per_group:  # group order: the same sum on every rank
            loss_sum += value
            right += good
            total += n
        if self.l2:
            loss_sum += self.l2 * self._add_l2()
        if self.l1:
            loss_sum += self.l1 * self._add_l1()
        result = StepResult(loss_sum, int(right), int(total), bool(extra[-1] > 0))
        if apply and np.isfinite(result.loss):
            self.apply_update(lr)
        return result

    def _add_l2(self) -> float:
        """Add l2 * W to the gradient of every decayed weight (after the sum: once); return
        0.5 * sum(W^2), summed element after element (the same bits everywhere)."""
        total = 0.0
        coef = self.model.dtype.type(self.l2)
        for w, g in self.model._decayed:
            total += 0.5 * sum_of_squares(w.reshape(-1))
            g += coef * w
        return total

    def _add_l1(self) -> float:
        """Add l1 * sign(W) to the gradient of every decayed weight (after the sum, and after
        L2: once); return sum(|W|), summed element after element (the same bits everywhere)."""
        total = 0.0
        coef = self.model.dtype.type(self.l1)
        for w, g in self.model._decayed:
            total += abs_sum(w.reshape(-1))
            g += self.model.l1_term(w, coef)
        return total
