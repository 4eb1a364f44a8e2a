"""The cifar net on 2 Ray actors vs 2 MPI ranks, and the allreduce alone per buffer size.

    python -m benchmarks.ray_vs_mpi [--batch 64] [--steps 30] [--json OUT.json]

Training: the real DataParallelStep (benchmarks/scaling.py's timed_steps), one BLAS thread per
worker, per-worker batch --batch; under `mpiexec -n 2` and on 2 Ray actors (num_cpus=1 each, a
local Ray with 2 CPUs) with each RayCommunicator transport: "shm" (the default when all actors
share a node) and "object_store" (what actors on different nodes use). Ratio = Ray img/s / MPI
img/s. Allreduce: median of --reps float32 in-place sums after a barrier, per buffer size, the
cifar gradient buffer included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SIZES = (1_000, 10_000, 100_000, 1_000_000)


def allreduce_times(comm, sizes, reps: int) -> dict:
    """Median seconds of an in-place float32 allreduce per size (this rank's view)."""
    out = {}
    for n in sizes:
        buf = np.ones(n, dtype=np.float32)
        for _ in range(3):
            comm.allreduce_(buf)
        times = []
        for _ in range(reps):
            comm.barrier()
            t0 = time.perf_counter()
            comm.allreduce_(buf)
            times.append(time.perf_counter() - t0)
        out[n] = float(np.median(times))
    return out


def worker(comm, batch: int, steps: int, sizes, reps: int) -> dict:
    from benchmarks.scaling import timed_steps

    result = timed_steps(comm, batch, steps)
    result["allreduce_s"] = allreduce_times(comm, list(sizes) + [result["params"] + 4], reps)
    return result


def mpi(batch: int, steps: int, reps: int) -> dict:
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", "2", sys.executable, "-m",
           "benchmarks.ray_vs_mpi", "--mpi-worker", "--batch", str(batch), "--steps", str(steps),
           "--reps", str(reps)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["allreduce_s"] = {int(n): t for n, t in result["allreduce_s"].items()}  # JSON keys
    return result


def ray_runs(batch: int, steps: int, reps: int) -> dict:
    import ray

    from distnn.comm.ray import RayCommunicator
    from distnn.comm.rendezvous import create_group, release_segments

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")

    @ray.remote(num_cpus=1, max_restarts=0)
    class Rank:
        def run(self, rank, rendezvous, transport):
            comm = RayCommunicator(rank, 2, rendezvous, transport=transport)
            try:
                return worker(comm, batch, steps, SIZES, reps)
            finally:
                comm.close()

    results = {}
    try:
        for transport in ("shm", "object_store"):
            rendezvous, _ = create_group(2)
            ranks = [Rank.remote() for _ in range(2)]
            ray.get(rendezvous.set_workers.remote(ranks))
            got = ray.get([r.run.remote(i, rendezvous, transport) for i, r in enumerate(ranks)],
                          timeout=900)
            results[transport] = got[0]
            for r in ranks:
                ray.kill(r, no_restart=True)
            release_segments(rendezvous)
            ray.kill(rendezvous, no_restart=True)
    finally:
        ray.shutdown()
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="per-worker batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=20, help="allreduce repetitions per size")
    p.add_argument("--json", default=None)
    p.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.mpi_worker:
        from distnn.comm import create_communicator

        comm = create_communicator("mpi")
        result = worker(comm, args.batch, args.steps, SIZES, args.reps)
        if comm.rank == 0:
            print(json.dumps(result))
        return
    m = mpi(args.batch, args.steps, args.reps)
    r = ray_runs(args.batch, args.steps, args.reps)
    report = {"model": "cifar", "workers": 2, "batch_per_worker": args.batch,
              "mpi_img_s": m["img_s"], "ray_shm_img_s": r["shm"]["img_s"],
              "ray_object_store_img_s": r["object_store"]["img_s"],
              "ratio_ray_shm_vs_mpi": r["shm"]["img_s"] / m["img_s"],
              "ratio_ray_object_store_vs_mpi": r["object_store"]["img_s"] / m["img_s"],
              "allreduce_ms": {
                  int(n): {"mpi": 1e3 * m["allreduce_s"][n],
                           "ray_shm": 1e3 * r["shm"]["allreduce_s"][n],
                           "ray_object_store": 1e3 * r["object_store"]["allreduce_s"][n]}
                  for n in sorted(m["allreduce_s"])}}
    print(f"cifar net, 2 workers x 1 thread, batch {args.batch} per worker, {args.steps} steps")
    print(f"  MPI                 {report['mpi_img_s']:8.1f} img/s")
    print(f"  Ray (shm)           {report['ray_shm_img_s']:8.1f} img/s   "
          f"ratio {report['ratio_ray_shm_vs_mpi']:.3f}")
    print(f"  Ray (object store)  {report['ray_object_store_img_s']:8.1f} img/s   "
          f"ratio {report['ratio_ray_object_store_vs_mpi']:.3f}")
    print(f"\n{'floats':>10} {'MPI ms':>9} {'Ray shm ms':>11} {'Ray objstore ms':>16}")
    for n, row in report["allreduce_ms"].items():
        print(f"{n:>10} {row['mpi']:9.3f} {row['ray_shm']:11.3f} {row['ray_object_store']:16.3f}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
