"""Deterministic sharding of every global batch across ranks, and once-only evaluation splits.

The epoch's order is a permutation fixed by (seed, epoch) alone. Step t's global batch is
positions [t*B, (t+1)*B) of it; rank r of N takes the r-th contiguous slice, so concatenating
ranks 0..N-1 gives exactly the 1-worker batch and N-worker training computes what 1 worker
would.

Last partial global batch (n % B = m > 0): with drop_last=False (the default, used for
training) it is kept and split as evenly as possible in rank order (the first m % N ranks get
one sample more; ranks may get 0), so every sample is used once per epoch; the trainer weights
each rank's gradient by its local count over the global count. drop_last=True drops it. Either
way every rank takes the same number of steps.
"""

from __future__ import annotations

import numpy as np

SAMPLER_STREAM = 0x5348  # keeps the sampler's random stream apart from other (seed, ...) users


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The epoch's order of all sample indices (n,) int64; independent of rank and size."""
    rng = np.random.default_rng([SAMPLER_STREAM, seed, epoch])
    return rng.permutation(num_samples).astype(np.int64)


def split_bounds(count: int, parts: int, part: int) -> tuple[int, int]:
    """[start, stop) of part `part` when `count` items are split as evenly as possible into
    `parts` contiguous pieces, the first count % parts pieces one longer."""
    base, extra = divmod(count, parts)
    start = part * base + min(part, extra)
    return start, start + base + (1 if part < extra else 0)


def group_plan(count: int, groups: int, accum: int, world_size: int,
               rank: int) -> list[list[tuple[int, int, int]]]:
    """Which groups of a global batch of `count` samples rank `rank` of `world_size` computes:
    per micro-batch, a list of (group, start, stop) with [start, stop) positions in the global
    batch. The batch is cut into `groups` contiguous groups as evenly as possible (empty ones
    when count < groups), the groups into `accum` contiguous micro-batches, and each
    micro-batch's groups into `world_size` contiguous shares, in rank order. Only the rank
    assignment depends on the world size; the groups never do."""
    plan = []
    for micro in range(accum):
        first, stop = split_bounds(groups, accum, micro)
        lo, hi = split_bounds(stop - first, world_size, rank)
        plan.append([(g, *split_bounds(count, groups, g)) for g in range(first + lo, first + hi)])
    return plan


def micro_shares(count: int, accum: int, world_size: int, rank: int) -> list[tuple[int, int]]:
    """The plain step's cut of a global batch of `count`: `accum` contiguous micro-batches as
    even as possible, each shared by the ranks in rank order; rank `rank`'s [start, stop) in
    each. Micro-batch i is the same samples on any number of ranks (what a synced BatchNorm
    normalises over); with accum 1, the rank's share of the whole batch."""
    out = []
    for micro in range(accum):
        first, stop = split_bounds(count, accum, micro)
        lo, hi = split_bounds(stop - first, world_size, rank)
        out.append((first + lo, first + hi))
    return out


def micro_counts(count: int, groups: int, accum: int) -> list[int]:
    """Samples in each micro-batch of a global batch of `count` (see group_plan)."""
    out = []
    for micro in range(accum):
        first, stop = split_bounds(groups, accum, micro)
        out.append(split_bounds(count, groups, stop - 1)[1] - split_bounds(count, groups, first)[0]
                   if stop > first else 0)
    return out


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ShardSampler:
    """Which global sample indices rank `rank` of `world_size` processes at each step.

    num_samples: dataset size n; global_batch: B, the batch of a 1-worker run, divisible by
    world_size; seed: fixes the permutation with the epoch (set_epoch); shuffle=False keeps
    index order; drop_last: drop the last partial global batch (see the module docstring).
    groups > 0: the rank takes its groups of every batch (group_plan with `accum`
    micro-batches), and global_batch need not be divisible by world_size; else its share of each
    of the `accum` micro-batches (micro_shares).
    """

    def __init__(self, num_samples: int, global_batch: int, rank: int, world_size: int,
                 seed: int, shuffle: bool = True, drop_last: bool = False, groups: int = 0,
                 accum: int = 1):
        self.num_samples = _check_int("num_samples", num_samples, 1)
        self.global_batch = _check_int("global_batch", global_batch, 1)
        self.world_size = _check_int("world_size", world_size, 1)
        self.rank = _check_int("rank", rank, 0)
        self.seed = _check_int("seed", seed, 0)
        if self.rank >= self.world_size:
            raise ValueError(f"rank {rank} out of range for world_size {world_size}")
        self.groups = _check_int("groups", groups, 0)
        self.accum = _check_int("accum", accum, 1)
        if self.groups and self.groups < self.world_size:
            raise ValueError(f"{world_size} ranks cannot share {groups} groups; expected at "
                             f"most as many ranks as groups")
        if not self.groups and self.global_batch % self.world_size:
            raise ValueError(f"global_batch {global_batch} is not divisible by world_size "
                             f"{world_size}; choose a multiple of {world_size} so every rank "
                             f"gets {global_batch // world_size}+x samples of each batch")
        if drop_last and self.num_samples < self.global_batch:
            raise ValueError(f"drop_last with {num_samples} samples < global_batch "
                             f"{global_batch} leaves no step at all")
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.local_batch = self.global_batch // self.world_size
        self.epoch = 0
        self._order: np.ndarray | None = None

    @property
    def steps_per_epoch(self) -> int:
        """Steps every rank takes per epoch (the same on all ranks)."""
        full, rest = divmod(self.num_samples, self.global_batch)
        return full + (1 if rest and not self.drop_last else 0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation local_indices() reads."""
        epoch = _check_int("epoch", epoch, 0)
        if epoch != self.epoch:
            self.epoch, self._order = epoch, None

    def order(self) -> np.ndarray:
        """The current epoch's order of all n indices (computed once per epoch)."""
        order = self._order
        if order is None:
            order = (epoch_permutation(self.num_samples, self.seed, self.epoch)
                     if self.shuffle else np.arange(self.num_samples, dtype=np.int64))
            self._order = order
        return order

    def global_indices(self, step: int) -> np.ndarray:
        """(m,) int64: the whole global batch of `step` (m = B, or less for the last one)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) \
                or not 0 <= step < self.steps_per_epoch:
            raise IndexError(f"step {step!r} out of range [0, {self.steps_per_epoch})")
        start = int(step) * self.global_batch
        return self.order()[start:start + self.global_batch]

    def local_indices(self, step: int) -> np.ndarray:
        """(k,) int64: this rank's contiguous slice of the step's global batch; k = B / N for
        full batches, and 0 <= k <= ceil(m / N) for a last partial batch of m samples."""
        batch = self.global_indices(step)
        if self.groups:
            plan = group_plan(len(batch), self.groups, self.accum, self.world_size, self.rank)
            parts = [batch[a:b] for micro in plan for _, a, b in micro]
        else:
            parts = [batch[a:b] for a, b in micro_shares(len(batch), self.accum,
                                                          self.world_size, self.rank)]
        return np.concatenate(parts) if parts else batch[:0]

    def __len__(self) -> int:
        return self.steps_per_epoch


def eval_indices(num_samples: int, rank: int, world_size: int) -> np.ndarray:
    """(k,) int64, sorted: rank's contiguous share of range(num_samples). Across ranks 0..N-1
    every sample appears exactly once (no padding, no duplicates); shares differ by at most 1,
    and contiguous sorted blocks make lazy HDF5 reads sequential."""
    num_samples = _check_int("num_samples", num_samples, 0)
    world_size = _check_int("world_size", world_size, 1)
    rank = _check_int("rank", rank, 0)
    if rank >= world_size:
        raise ValueError(f"rank {rank} out of range for world_size {world_size}")
    start, stop = split_bounds(num_samples, world_size, rank)
    return np.arange(start, stop, dtype=np.int64)
