"""Run under `mpiexec -n 2` by tests/train/test_overlap.py: each rank prints one JSON line per
case (plain / invariant step, with / without BatchNorm), for every rank at once: whether the
overlapped step gave the non-overlapped step's parameters and losses to the bit, whether the
first bucket started before the backward pass ended in the last step, the number of buckets."""

from __future__ import annotations

import json

import numpy as np

from distnn.comm import create_communicator
from distnn.data import ShardSampler
from distnn.optim import make_optimizer
from distnn.train.invariant import InvariantStep
from distnn.train.step import DataParallelStep
from tests.train.test_overlap import BN, SMALL_MB, SPEC, batch, model_of


def run(comm, spec, invariant, mb):
    model = model_of(spec)
    if invariant:
        step = InvariantStep(model, make_optimizer("sgd"), comm, l2=1e-3, groups=4, seed=1,
                             bucket_mb=mb)
        tracker = step.exact_overlap
    else:
        step = DataParallelStep(model, make_optimizer("momentum", mu=0.9), comm, l2=1e-3,
                                seed=1, bucket_mb=mb)
        tracker = step.overlap
    n, steps = 32, 3
    x, y = batch(n * steps)
    # This rank's samples of each global batch (its groups' for the invariant step).
    sampler = ShardSampler(n * steps, n, comm.rank, comm.size, 0, shuffle=False,
                           groups=4 if invariant else 0)
    losses = []
    for t in range(steps):
        idx = sampler.local_indices(t)
        res = step(x[idx], y[idx], n, 0.05, False, step=t, indices=idx)
        losses.append([res.loss, res.correct, res.count])
    return model.params.copy(), losses, tracker


def main():
    comm = create_communicator("mpi")
    for spec, name in ((SPEC, "plain"), (BN, "batchnorm")):
        for invariant in (False, True):
            p0, l0, _ = run(comm, spec, invariant, None)
            p1, l1, tracker = run(comm, spec, invariant, SMALL_MB)
            same = bool(np.array_equal(p0, p1)) and l0 == l1
            early = tracker.started[0] < tracker.backward_end
            # Every rank's answer, printed by rank 0 (lines of two ranks would interleave).
            flags = comm.allreduce_obj([int(same), int(early)], op="min")
            if comm.rank == 0:
                print(json.dumps({
                    "case": f"{name}/{'invariant' if invariant else 'plain'}",
                    "same": bool(flags[0]), "started_during_backward": bool(flags[1]),
                    "buckets": len(tracker.buckets),
                    "first_started_before_end_s": tracker.backward_end - tracker.started[0]}),
                    flush=True)


if __name__ == "__main__":
    main()
