"""The cost of the world-size invariant step against the plain step, on the cifar net.

Run (it launches the MPI workers itself):
    python -m benchmarks.invariant_step [--batch 128] [--groups 16] [--steps 20] [--rounds 3]
        [--ranks 1,2] [--profile] [--json OUT]

For 1 rank (this process's child, local communicator) and 2 MPI ranks, each worker builds the
cifar net (batch 128 global, one thread per rank) and times the plain step
(distnn.train.step.DataParallelStep: one pass over the rank's shard, float32 allreduce) and the
invariant step (distnn.train.invariant.InvariantStep: --groups groups, exact fixed-point sum,
float64 allreduce) in alternating rounds, so the machine's noise hits both alike; medians over
rounds.
Printed: img/s of both and cost = plain img/s / invariant img/s - 1 (the target: <= 5 %).
--profile: the invariant step's time split into the lockstep forward/backward, the exact sum
and the rest (1 rank).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.scaling import CIFAR, launch_worker


def worker(batch: int, groups: int, steps: int, rounds: int, profile: bool) -> dict:
    import numpy as np
    from threadpoolctl import threadpool_limits

    from distnn.comm import create_communicator, detect_backend
    from distnn.data import ShardSampler
    from distnn.nn import Sequential, lockstep
    from distnn.nn import threads as nn_threads
    from distnn.optim import make_optimizer
    from distnn.train import exact
    from distnn.train.invariant import InvariantStep
    from distnn.train.step import EXTRA_SLOTS, DataParallelStep

    comm = create_communicator(detect_backend())
    rng = np.random.default_rng(0)
    x_all = rng.random((batch, 32, 32, 3), dtype=np.float32)
    y_all = rng.integers(0, 10, batch)
    with threadpool_limits(1), nn_threads.limit(1):
        steps_of = {}
        for mode in ("plain", "invariant"):
            model = Sequential(CIFAR, (32, 32, 3), seed=0, extra_grad_slots=EXTRA_SLOTS)
            opt = make_optimizer("momentum", mu=0.9)
            if mode == "plain":
                fn = DataParallelStep(model, opt, comm)
                sampler = ShardSampler(batch, batch, comm.rank, comm.size, 0, shuffle=False)
            else:
                fn = InvariantStep(model, opt, comm, groups=groups)
                sampler = ShardSampler(batch, batch, comm.rank, comm.size, 0, shuffle=False,
                                       groups=groups)
            idx = sampler.local_indices(0)
            steps_of[mode] = (fn, x_all[idx], y_all[idx], idx)
        times: dict[str, list[float]] = {"plain": [], "invariant": []}
        for r in range(rounds + 1):  # round 0 warms up (compiles, allocates)
            for mode, (fn, x, y, idx) in steps_of.items():
                comm.barrier()
                t0 = time.perf_counter()
                for s in range(steps if r else 2):
                    fn(x, y, batch, 0.01, False, step=s, indices=idx)
                comm.barrier()
                if r:
                    times[mode].append((time.perf_counter() - t0) / steps)
        out = {"ranks": comm.size, "batch": batch, "groups": groups}
        for mode, ts in times.items():
            out[f"{mode}_img_s"] = batch / statistics.median(ts)
        out["cost"] = out["plain_img_s"] / out["invariant_img_s"] - 1
        if profile:
            fn, x, y, idx = steps_of["invariant"]
            spent = {"lockstep": 0.0, "exact_sum": 0.0}
            run, call = lockstep.Lockstep.run, exact.ExactSum.__call__

            def timed(key, inner):
                def wrapper(*a, **k):
                    t = time.perf_counter()
                    try:
                        return inner(*a, **k)
                    finally:
                        spent[key] += time.perf_counter() - t
                return wrapper

            lockstep.Lockstep.run = timed("lockstep", run)
            exact.ExactSum.__call__ = timed("exact_sum", call)
            t0 = time.perf_counter()
            for s in range(steps):
                fn(x, y, batch, 0.01, False, step=s, indices=idx)
            total = time.perf_counter() - t0
            lockstep.Lockstep.run, exact.ExactSum.__call__ = run, call
            out["profile_ms"] = {k: 1000 * v / steps for k, v in spent.items()}
            out["profile_ms"]["rest"] = 1000 * total / steps - sum(out["profile_ms"].values())
    return out


def launch(ranks: int, args) -> dict:
    flags = ["--batch", str(args.batch), "--groups", str(args.groups), "--steps",
             str(args.steps), "--rounds", str(args.rounds)]
    return launch_worker("benchmarks.invariant_step", ranks,
                         flags + (["--profile"] if args.profile and ranks == 1 else []))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="global batch")
    p.add_argument("--groups", type=int, default=16, help="train.groups of the invariant step")
    p.add_argument("--steps", type=int, default=20, help="steps per timed round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--ranks", default="1,2", help="comma-separated rank counts")
    p.add_argument("--profile", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = worker(args.batch, args.groups, args.steps, args.rounds, args.profile)
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            print(json.dumps(result))
        return
    report = [launch(int(r), args) for r in args.ranks.split(",")]
    print(f"cifar net, global batch {args.batch}, invariant step with {args.groups} groups")
    print(f"{'ranks':>5} {'plain img/s':>12} {'invariant img/s':>16} {'cost':>7}")
    for row in report:
        print(f"{row['ranks']:>5} {row['plain_img_s']:>12.1f} {row['invariant_img_s']:>16.1f} "
              f"{100 * row['cost']:>6.1f}%")
        if "profile_ms" in row:
            print("      invariant step, ms per step: " + ", ".join(
                f"{k} {v:.1f}" for k, v in row["profile_ms"].items()))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
