"""The measurements behind benchmarks/scaling_model.py (run that; this module's `--worker` is the
MPI rank it launches).

  * compute: one worker's training pass on the cifar net (the bundled cifar10 config's model, as
    benchmarks/scaling.py builds it), one thread: forward + loss, the end of each layer's
    backward (the model's `after_layer` hook), the momentum update; medians of CPU time (the
    pass on a core of its own) and of the wall clock;
  * codec: distnn/train/compress.py's bf16 and fp16 Codec (the step's code) on the gradient
    buffer: encode, decode, and ErrorFeedback.encode (residual add, encode, the sender's decode,
    new residual); the float32 sum a reduction step does, for the term the ring model leaves
    out; CPU time;
  * MPI: `mpiexec -n 2` (and 1 rank without it) running the real DataParallelStep as
    benchmarks/scaling.py's timed_steps builds it (one allreduce after backward, and overlapped
    in buckets when the tree's step has bucket_mb), alternating with the same pass without
    communication (so that steps and compute see the same load), then the allreduce
    per buffer size (benchmarks/ray_vs_mpi.py's allreduce_times);
  * Ray: the same on 2 actors pinned to the two nodes of a two-node Ray cluster started here
    (`ray start --head` + `ray start --address`, 1 CPU each, their own temp dir, so that no
    other Ray instance on this machine finds it), actors placed with
    NodeAffinitySchedulingStrategy: the cross-node object-store path. Only the processes
    started here are stopped (SIGTERM to their `ray start --block`).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY_NODE_STORE = 200 * 1024 * 1024  # object store bytes of each Ray node started here


def cifar_specs() -> tuple[list[dict], str]:
    """(benchmarks/scaling.py's CIFAR, a note on how it differs from the bundled config)."""
    import yaml

    import distnn
    from benchmarks.scaling import CIFAR

    cfg = yaml.safe_load((Path(distnn.__file__).parent / "configs/cifar10.yaml").read_text())
    bundled = [{k: v for k, v in s.items() if k != "init"} for s in cfg["model"]
               if s["type"] != "dropout"]
    note = ("the bundled cifar10 model without its dropout layer (no parameters), as "
            "benchmarks/scaling.py builds it")
    if bundled != CIFAR:
        note = "WARNING: benchmarks/scaling.py's CIFAR differs from the bundled cifar10 model"
    return cast(list[dict], CIFAR), note


def build(batch: int, seed: int = 0, **step_args):
    """(model, DataParallelStep or None, optimizer, x, y): the cifar net as benchmarks/scaling.py's
    timed_steps builds it; with `step_args` (comm=..., bucket_mb=...) its step too."""
    from distnn.nn import Sequential
    from distnn.optim import make_optimizer
    from distnn.train.step import EXTRA_SLOTS, DataParallelStep

    model = Sequential(cifar_specs()[0], (32, 32, 3), seed=0, extra_grad_slots=EXTRA_SLOTS)
    opt = make_optimizer("momentum", mu=0.9)
    rng = np.random.default_rng(seed)
    x, y = rng.random((batch, 32, 32, 3), dtype=np.float32), rng.integers(0, 10, batch)
    step = DataParallelStep(model, opt, **step_args) if step_args else None
    return model, step, opt, x, y


def pass_times(model, opt, x, y, clock=time.perf_counter) -> list[float]:
    """One training pass without communication, seconds of `clock`: [forward + loss,
    backward, update, the end of each layer's backward from the start of backward]."""
    marks: dict = {}

    def mark(key) -> None:
        marks[key] = clock()

    model.after_layer = mark  # a model of its own: a step's overlap hook is not replaced
    t0 = clock()
    model.forward_backward(x, y, "softmax", 0.0, len(y), before_backward=lambda *_: mark("b"))
    t1 = clock()
    off = model.train_offset
    opt.step(model.params[off:], model.grads[off:], 0.01)
    t2 = clock()
    model.after_layer = None
    return [marks["b"] - t0, t1 - marks["b"], t2 - t1,
            *(marks[i] - marks["b"] if i in marks else 0.0 for i in range(len(model.layers)))]


def compute(batch: int, reps: int, warmup: int = 3) -> dict:
    """One worker's pass (pass_times), one thread, `reps` times on the wall clock and `reps`
    times on this process's CPU-time clock, in turn: the wall medians and fastest pass, the
    CPU-time medians (the pass on a core of its own: on this shared machine the wall clock
    also counts the time other processes hold the core); the model's layout."""
    from distnn.nn import threads as nn_threads
    from distnn.train.buckets import layer_ranges

    with nn_threads.limit(1):
        model, _, opt, x, y = build(batch)
        for _ in range(warmup):
            pass_times(model, opt, x, y)
        wall, cpu = [], []
        for _ in range(reps):
            wall.append(pass_times(model, opt, x, y))
            cpu.append(pass_times(model, opt, x, y, time.process_time))
    arr = np.array(wall)
    return {"pass_s": [float(v) for v in np.median(arr, axis=0)],
            "fastest_s": [float(v) for v in arr[np.argmin(arr[:, :3].sum(axis=1))]],
            "cpu_s": [float(v) for v in np.median(np.array(cpu), axis=0)],
            "ranges": layer_ranges(model),
            "layers": [f"{layer.name} {layer.describe()}" for layer in model.layers],
            "region": model.params.size - model.train_offset, "params": model.num_params,
            "model_note": cifar_specs()[1], "reps": reps}


def codec(n: int, reps: int) -> dict:
    """CPU seconds per float of each codec step on a buffer of n floats (medians of reps, after
    two that compile and warm up): distnn's Codec.encode and .decode, ErrorFeedback.encode
    (the encode the step runs on each bucket: residual add, encode, the sender's decode, new
    residual), and the float32 sum of one reduction step."""
    from distnn.train.compress import CODECS, Codec, ErrorFeedback

    rng = np.random.default_rng(1)
    g = rng.standard_normal(n, dtype=np.float32)
    c, d, q = np.zeros(n, np.float32), np.empty(n, np.float32), np.empty(n, np.uint16)
    steps = {}
    for kind in CODECS:
        code, feedback = Codec(kind), ErrorFeedback(Codec(kind), n)
        steps[f"{kind}_encode"] = lambda code=code: code.encode(g, q)
        steps[f"{kind}_decode"] = lambda code=code: code.decode(q, d)
        steps[f"{kind}_feedback_encode"] = lambda feedback=feedback: feedback.encode(g, q)
    steps["sum"] = lambda: np.add(c, g, out=c)  # what one reduction step does per float
    out = {}
    for name, fn in steps.items():
        times = []
        for _ in range(reps + 2):
            t0 = time.process_time()  # CPU time, as the compute's (see compute)
            fn()
            times.append(time.process_time() - t0)
        out[name] = float(np.median(times[2:])) / n
    # a bucket costs its sender the error-feedback encode, its receiver the decode of the sum
    for kind in CODECS:
        out[f"{kind}_total"] = out[f"{kind}_feedback_encode"] + out[f"{kind}_decode"]
    return out


# -- the steps and the allreduce on MPI ranks and Ray actors -------------------------------------
def interleaved(comm, batch: int, steps: int, bucket_mb: float) -> dict:
    """Per-step seconds (medians) of the real DataParallelStep, one allreduce after backward
    ("step") and overlapped in buckets ("overlap_step", when this tree's DataParallelStep has
    bucket_mb and there are 2+ ranks), and of the same pass without communication ("pass",
    pass_times), one of each in turn, so that all see the same load of this shared machine.
    Each built as benchmarks/scaling.py's timed_steps builds its step."""
    from threadpoolctl import threadpool_limits

    from distnn.train.step import DataParallelStep

    with threadpool_limits(1):
        model, _, opt, x, y = build(batch, comm.rank)
        runs = {"step": build(batch, comm.rank, comm=comm)[1]}
        if comm.size > 1 and "bucket_mb" in inspect.signature(DataParallelStep).parameters:
            runs["overlap_step"] = build(batch, comm.rank, comm=comm, bucket_mb=bucket_mb)[1]
        times: dict[str, list] = {"pass": [], **{k: [] for k in runs}}
        warmup = max(1, min(3, steps // 5))  # one for a short (--quick) run
        for i in range(warmup + steps):  # the first ones warm up (Numba, work buffers)
            comm.barrier()
            one = pass_times(model, opt, x, y)
            times["pass"] += [one] if i >= warmup else []
            for kind, step in runs.items():
                comm.barrier()  # a rank's pass may end early: not the step's time
                t0 = time.perf_counter()
                step(x, y, batch * comm.size, 0.01, False)
                if i >= warmup:
                    times[kind].append(time.perf_counter() - t0)
    # the slowest rank sets the pace: the element-wise max over ranks of the medians
    out = {k: np.median(np.array(v), axis=0) for k, v in times.items()}
    return {k: [float(u) for u in np.atleast_1d(comm.allreduce_(np.atleast_1d(v), op="max"))]
            for k, v in out.items()}


def worker(comm, batch: int, steps: int, sizes: list[int], reps: int, bucket_mb: float) -> dict:
    """One rank: the interleaved steps, then the allreduce per size (benchmarks/ray_vs_mpi.py's
    allreduce_times; the step's gradient region with its 4 slots included)."""
    from benchmarks.ray_vs_mpi import allreduce_times

    out: dict = {"ranks": comm.size, **interleaved(comm, batch, steps, bucket_mb)}
    model = build(1)[0]
    out["region"] = model.params.size - model.train_offset
    if comm.size > 1:
        out["allreduce_s"] = allreduce_times(comm, [*sizes, out["region"] + 4], reps)
    return out


def mpi(ranks: int, batch: int, steps: int, sizes: list[int], reps: int,
        bucket_mb: float) -> dict:
    """This module's --worker alone (1 rank) or under `mpiexec -n ranks`; rank 0's figures."""
    from benchmarks.scaling import launch_worker

    out = launch_worker("benchmarks.scaling_measure", ranks, [
        "--batch", str(batch), "--steps", str(steps), "--reps", str(reps),
        "--bucket-mb", str(bucket_mb), "--sizes", ",".join(map(str, sizes))])
    out["allreduce_s"] = {int(k): v for k, v in out.get("allreduce_s", {}).items()}  # JSON keys
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TwoNodeRay:
    """A head and one worker node on this machine, 1 CPU each, in a temp dir of their own."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="smray-")  # short: Ray's socket paths < 108 chars
        self.port = _free_port()
        self.env = {**os.environ, "RAY_AUTH_MODE": "disabled", "PYTHONPATH": os.pathsep.join(
            p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.env.pop("RAY_ADDRESS", None)
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        """Start the head, then (once it has written its address) the worker node."""
        self._start(["--head", "--port", str(self.port), "--include-dashboard=false"], "head")
        self._wait(lambda: (Path(self.tmp) / "ray_current_cluster").exists(), "the head")
        self._start(["--address", self.address], "node")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _start(self, args: list[str], tag: str) -> None:
        ports = [a for name in ("--dashboard-agent-listen-port", "--dashboard-agent-grpc-port",
                                "--metrics-export-port", "--runtime-env-agent-port")
                 for a in (name, str(_free_port()))]
        log = (Path(self.tmp) / f"{tag}.log").open("w")
        self.procs.append(subprocess.Popen(
            [str(BIN / "ray"), "start", "--block", *args, "--node-ip-address", "127.0.0.1",
             "--num-cpus", "1", "--object-store-memory", str(RAY_NODE_STORE), "--temp-dir",
             self.tmp, "--disable-usage-stats", *ports],
            stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True))

    def _wait(self, ready, what: str, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while not ready():
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"ray start exited ({p.returncode}); logs in {self.tmp}")
            if time.monotonic() > end:
                raise RuntimeError(f"{what} not up after {timeout} s; logs in {self.tmp}")
            time.sleep(0.5)

    def connect(self) -> list[str]:
        """ray.init to this cluster once both nodes are alive; their node ids."""
        import ray

        os.environ["RAY_AUTH_MODE"] = "disabled"
        ray.init(address=self.address, logging_level=logging.WARNING)
        self._wait(lambda: len([n for n in ray.nodes() if n["Alive"]]) == 2, "the second node")
        return [n["NodeID"] for n in ray.nodes() if n["Alive"]]

    def stop(self, keep_logs: bool = False) -> None:
        for p in reversed(self.procs):  # `ray start --block` stops what it started
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        if not keep_logs:
            shutil.rmtree(self.tmp, ignore_errors=True)


def ray_two_nodes(batch: int, steps: int, sizes: list[int], reps: int, bucket_mb: float) -> dict:
    """`worker` on 2 actors, one per node of a two-node cluster; rank 0's figures, the
    transport the communicator chose and the actors' node ids."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from distnn.comm.ray import RayCommunicator
    from distnn.comm.rendezvous import create_group, release_segments

    class Rank:
        def run(self, rank, rendezvous):
            comm = RayCommunicator(rank, 2, rendezvous, transport="auto")
            try:
                out = worker(comm, batch, steps, sizes, reps, bucket_mb)
                out["transport"] = comm.transport
                out["node"] = ray.get_runtime_context().get_node_id()
                return out
            finally:
                comm.close()

    # Wrapped by a call, not a class decorator (mypy: a decorated class has no `.options`)
    actor = ray.remote(num_cpus=1, max_restarts=0)(Rank)
    cluster, done = TwoNodeRay(), False
    try:
        cluster.start()
        nodes = cluster.connect()
        rendezvous, _ = create_group(2)
        ranks: list[Any] = [actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
            node, soft=False)).remote() for node in nodes]
        ray.get(rendezvous.set_workers.remote(ranks))
        got = ray.get([r.run.remote(i, rendezvous) for i, r in enumerate(ranks)], timeout=900)
        release_segments(rendezvous, nodes)
        out = got[0]
        out["nodes"] = [g["node"] for g in got]
        out["transports"] = [g["transport"] for g in got]
        done = True
        return out
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.stop(keep_logs=not done)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="one MPI rank of benchmarks/scaling_model.py")
    p.add_argument("--worker", action="store_true")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--reps", type=int, default=15)
    p.add_argument("--bucket-mb", type=float, default=1.0)
    p.add_argument("--sizes", default="")
    args = p.parse_args(argv)
    from distnn.comm import create_communicator, detect_backend

    comm = create_communicator(detect_backend())
    sizes = [int(s) for s in args.sizes.split(",") if s]
    out = worker(comm, args.batch, args.steps, sizes, args.reps, args.bucket_mb)
    if comm.rank == 0:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
