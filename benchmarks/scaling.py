"""Data-parallel scaling of distnn under MPI on the cifar net, next to PyTorch DDP (gloo).

Run (it launches the workers itself):
    python -m benchmarks.scaling --batch 64 --steps 30 [--json OUT.json]

Per-rank batch is fixed (weak scaling): efficiency = (2-rank img/s) / (2 x 1-rank img/s).
Also reported: the allreduce's share of the 2-rank step, the share of the step spent waiting
for communication with the allreduce after the backward pass and overlapped with it
(`--bucket-mb`, comm.overlap), and PyTorch DDP (gloo, 2 processes x 1 thread) on the same model
when torch is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

CIFAR = [
    {"type": "conv", "filters": 32, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "conv", "filters": 32, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 64, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "conv", "filters": 64, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "flatten"}, {"type": "dense", "units": 256}, {"type": "relu"},
    {"type": "dense", "units": 10},
]


def distnn_worker(batch: int, steps: int, bucket_mb: float | None = None) -> dict:
    """One MPI rank (or the only process): see timed_steps."""
    from distnn.comm import create_communicator, detect_backend

    return timed_steps(create_communicator(detect_backend()), batch, steps, bucket_mb)


class WaitClock:
    """The model's spans (a Tracer's interface): adds up the time in the "allreduce" span,
    which is the step's wait for its communication (all of it without overlap, what the
    backward pass did not hide with it)."""

    def __init__(self):
        self.seconds = 0.0

    @contextmanager
    def span(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if name == "allreduce":
                self.seconds += time.perf_counter() - t0


def timed_steps(comm, batch: int, steps: int, bucket_mb: float | None = None) -> dict:
    """Timed training steps of the real DataParallelStep on `comm` (any backend), one BLAS
    thread, overlapped in buckets of `bucket_mb` MB (None: one allreduce after the backward
    pass), then the allreduce of the gradient buffer alone; returns this rank's figures."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from distnn.nn import Sequential
    from distnn.optim import make_optimizer
    from distnn.train.step import EXTRA_SLOTS, DataParallelStep

    with threadpool_limits(1):
        model = Sequential(CIFAR, (32, 32, 3), seed=0, extra_grad_slots=EXTRA_SLOTS)
        step = DataParallelStep(model, make_optimizer("momentum", mu=0.9), comm,
                                bucket_mb=bucket_mb)
        clock = WaitClock()
        model.spans = clock
        rng = np.random.default_rng(comm.rank)
        x = rng.random((batch, 32, 32, 3), dtype=np.float32)
        y = rng.integers(0, 10, batch)
        for _ in range(3):
            step(x, y, batch * comm.size, 0.01, False)
        comm.barrier()
        clock.seconds = 0.0
        t0 = time.perf_counter()
        for _ in range(steps):
            step(x, y, batch * comm.size, 0.01, False)
        comm.barrier()
        total = time.perf_counter() - t0
        wait = clock.seconds
        t0 = time.perf_counter()
        for _ in range(steps):
            comm.allreduce_(model.grad_buffer)
        allreduce = time.perf_counter() - t0
    return {"ranks": comm.size, "img_s": batch * comm.size * steps / total,
            "step_ms": 1000 * total / steps, "allreduce_ms": 1000 * allreduce / steps,
            "wait_ms": 1000 * wait / steps, "wait_share": wait / total,
            "params": int(model.params.size)}


def torch_ddp_worker(rank: int, size: int, batch: int, steps: int, port: int, out) -> None:
    import torch
    import torch.distributed as dist
    import torch.nn as tnn

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=size)
    torch.manual_seed(0)
    net = tnn.Sequential(
        tnn.Conv2d(3, 32, 3, padding=1), tnn.ReLU(), tnn.Conv2d(32, 32, 3, padding=1), tnn.ReLU(),
        tnn.MaxPool2d(2), tnn.Conv2d(32, 64, 3, padding=1), tnn.ReLU(),
        tnn.Conv2d(64, 64, 3, padding=1), tnn.ReLU(), tnn.MaxPool2d(2), tnn.Flatten(),
        tnn.Linear(4096, 256), tnn.ReLU(), tnn.Linear(256, 10))
    model = tnn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def one():
        opt.zero_grad()
        tnn.functional.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(3):
        one()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    dist.barrier()
    if rank == 0:
        out.put(batch * size * steps / (time.perf_counter() - t0))
    dist.destroy_process_group()


def torch_ddp(size: int, batch: int, steps: int) -> float | None:
    try:
        import torch.multiprocessing as tmp
    except ImportError:
        return None
    ctx = tmp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=torch_ddp_worker, args=(r, size, batch, steps, port, queue))
             for r in range(size)]
    for p in procs:
        p.start()
    result = queue.get(timeout=600)
    for p in procs:
        p.join()
    return result


def launch(ranks: int, batch: int, steps: int, bucket_mb: float | None = None) -> dict:
    """Run this module's worker under mpiexec (or alone for 1 rank) and read rank 0's JSON."""
    extra = [] if bucket_mb is None else ["--bucket-mb", str(bucket_mb)]
    return launch_worker("benchmarks.scaling", ranks, ["--batch", str(batch), "--steps",
                                                       str(steps), *extra])


def launch_worker(module: str, ranks: int, args: list[str]) -> dict:
    """`python -m MODULE --worker ARGS` under mpiexec (alone for 1 rank); rank 0's last stdout
    line, as JSON."""
    cmd = [sys.executable, "-m", module, "--worker", *args]
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] + cmd
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64, help="per-rank batch")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--json", default=None)
    p.add_argument("--bucket-mb", type=float, default=None,
                   help="bucket size of the overlapped run (comm.bucket_mb; default 1)")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        result = distnn_worker(args.batch, args.steps, args.bucket_mb)
        if int(os.environ.get("PMI_RANK", "0")) == 0:
            print(json.dumps(result))
        return
    bucket_mb = args.bucket_mb or 1.0
    one = launch(1, args.batch, args.steps)
    two = launch(2, args.batch, args.steps)
    lapped = launch(2, args.batch, args.steps, bucket_mb)
    eff = two["img_s"] / (2 * one["img_s"])
    report = {"model": "cifar", "batch_per_rank": args.batch, "one_rank_img_s": one["img_s"],
              "two_rank_img_s": two["img_s"], "efficiency": eff,
              "allreduce_ms": two["allreduce_ms"], "step_ms": two["step_ms"],
              "allreduce_share": two["allreduce_ms"] / two["step_ms"], "params": two["params"],
              "wait_share": two["wait_share"], "overlap_two_rank_img_s": lapped["img_s"],
              "overlap_efficiency": lapped["img_s"] / (2 * one["img_s"]),
              "overlap_wait_share": lapped["wait_share"], "bucket_mb": bucket_mb}
    if not args.no_torch:
        ddp = torch_ddp(2, args.batch, args.steps)
        report["torch_ddp_img_s"] = ddp
        report["ratio_vs_ddp"] = two["img_s"] / ddp if ddp else None
    for key, value in report.items():
        print(f"{key:>18}: {value:.4g}" if isinstance(value, float) else f"{key:>18}: {value}")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
