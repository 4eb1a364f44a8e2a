"""The cifar net on N Ray actors vs N MPI ranks, and the allreduce alone per buffer size.

    python -m benchmarks.ray_vs_mpi [--workers 4] [--nodes 2] [--bucket-mb 1] [--batch 64]
        [--steps 30] [--json OUT.json]

Training: the real DataParallelStep (benchmarks/scaling.py's timed_steps), one BLAS thread per
worker, per-worker batch --batch, the allreduce overlapped with the backward pass in buckets of
--bucket-mb MB (--bucket-mb 0: one allreduce after it); under `mpiexec -n N` and on N Ray
actors (num_cpus=1 each). With --nodes 1, one local Ray with N CPUs and each RayCommunicator
transport: "shm" (the default when all actors share a node) and "object_store". With --nodes K
> 1, a real multi-node Ray cluster on this machine (ray.cluster_utils.Cluster: K raylets, each
its own node id and object store, N/K CPUs each), so the actors spread over the nodes and the
transport is the object store, as across machines. Ratio = Ray img/s / MPI img/s. Allreduce:
median of --reps float32 in-place sums after a barrier, per buffer size, the cifar gradient
buffer included. With N workers on fewer cores, both sides are oversubscribed alike.
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


def worker(comm, batch: int, steps: int, sizes, reps: int, bucket_mb: float | None) -> dict:
    from benchmarks.scaling import timed_steps

    result = timed_steps(comm, batch, steps, bucket_mb)
    result["allreduce_s"] = allreduce_times(comm, list(sizes) + [result["params"] + 4], reps)
    result["transport"] = getattr(comm, "transport", comm.name)
    return result


def mpi(workers: int, batch: int, steps: int, reps: int, bucket_mb: float | None) -> dict:
    cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(workers), sys.executable,
           "-m", "benchmarks.ray_vs_mpi", "--mpi-worker", "--batch", str(batch), "--steps",
           str(steps), "--reps", str(reps), "--bucket-mb", str(bucket_mb or 0)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["allreduce_s"] = {int(n): t for n, t in result["allreduce_s"].items()}  # JSON keys
    return result


def ray_runs(workers: int, nodes: int, batch: int, steps: int, reps: int,
             bucket_mb: float | None) -> dict:
    """{transport: rank 0's figures} on N actors: one local Ray (shm, object_store), or a
    K-node cluster on this machine (the transport the actors choose: the object store)."""
    import ray

    from distnn.comm.ray import RayCommunicator
    from distnn.comm.rendezvous import create_group, release_segments

    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    cluster = None
    if nodes > 1:
        from ray.cluster_utils import Cluster

        per = workers // nodes
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": per, "include_dashboard": False})
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=per)
        ray.init(address=cluster.address, logging_level="WARNING")
    else:
        ray.init(num_cpus=workers, include_dashboard=False, logging_level="WARNING")

    @ray.remote(num_cpus=1, max_restarts=0)
    class Rank:
        def node(self):
            return ray.get_runtime_context().get_node_id()

        def run(self, rank, rendezvous, transport):
            comm = RayCommunicator(rank, workers, rendezvous, transport=transport)
            try:
                return worker(comm, batch, steps, SIZES, reps, bucket_mb)
            finally:
                comm.close()

    results = {}
    try:
        for transport in (("shm", "object_store") if nodes == 1 else ("auto",)):
            rendezvous, _ = create_group(workers)
            ranks = [Rank.remote() for _ in range(workers)]
            ray.get(rendezvous.set_workers.remote(ranks))
            ids = ray.get([r.node.remote() for r in ranks], timeout=300)
            got = ray.get([r.run.remote(i, rendezvous, transport) for i, r in enumerate(ranks)],
                          timeout=1800)
            got[0]["nodes"] = len(set(ids))
            results[got[0]["transport"] if transport == "auto" else transport] = got[0]
            for r in ranks:
                ray.kill(r, no_restart=True)
            release_segments(rendezvous)
            ray.kill(rendezvous, no_restart=True)
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
    return results


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--nodes", type=int, default=2, help="Ray nodes (raylets) on this machine")
    p.add_argument("--bucket-mb", type=float, default=1.0, help="0: no overlap")
    p.add_argument("--batch", type=int, default=64, help="per-worker batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--reps", type=int, default=20, help="allreduce repetitions per size")
    p.add_argument("--json", default=None)
    p.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    bucket_mb = args.bucket_mb or None
    if args.mpi_worker:
        from distnn.comm import create_communicator

        comm = create_communicator("mpi")
        result = worker(comm, args.batch, args.steps, SIZES, args.reps, bucket_mb)
        if comm.rank == 0:
            print(json.dumps(result))
        return
    if args.workers % args.nodes:
        sys.exit(f"--workers {args.workers} over --nodes {args.nodes}: expected a multiple")
    m = mpi(args.workers, args.batch, args.steps, args.reps, bucket_mb)
    r = ray_runs(args.workers, args.nodes, args.batch, args.steps, args.reps, bucket_mb)
    report = {"model": "cifar", "workers": args.workers, "ray_nodes": args.nodes,
              "bucket_mb": bucket_mb, "batch_per_worker": args.batch, "mpi_img_s": m["img_s"],
              "mpi_wait_share": m["wait_share"],
              "ray": {t: {"img_s": v["img_s"], "ratio_vs_mpi": v["img_s"] / m["img_s"],
                          "wait_share": v["wait_share"], "nodes": v["nodes"]}
                      for t, v in r.items()},
              "allreduce_ms": {int(n): {"mpi": 1e3 * m["allreduce_s"][n],
                                        **{t: 1e3 * v["allreduce_s"][n] for t, v in r.items()}}
                               for n in sorted(m["allreduce_s"])}}
    overlap = f"buckets of {bucket_mb:g} MB overlapped" if bucket_mb else "no overlap"
    print(f"cifar net, {args.workers} workers x 1 thread, batch {args.batch} per worker, "
          f"{args.steps} steps, {overlap}; Ray on {args.nodes} node(s)")
    print(f"  MPI                     {m['img_s']:8.1f} img/s   waiting "
          f"{100 * m['wait_share']:.1f} % of the step")
    for t, v in report["ray"].items():
        print(f"  Ray {t:<12} ({v['nodes']} nodes) {v['img_s']:8.1f} img/s   ratio "
              f"{v['ratio_vs_mpi']:.3f}   waiting {100 * v['wait_share']:.1f} %")
    names = list(r)
    print(f"\n{'floats':>10} {'MPI ms':>9} " + " ".join(f"{'Ray ' + t + ' ms':>18}" for t in names))
    for n, row in report["allreduce_ms"].items():
        print(f"{n:>10} {row['mpi']:9.3f} " + " ".join(f"{row[t]:18.3f}" for t in names))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
