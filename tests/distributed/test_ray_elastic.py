"""Ray across two nodes (issues 12 and 16): the same bits on 1 and 3 workers, 3 workers on two
nodes talking through Ray's object store (the cross-node transport), a killed actor replaced and
resumed, `ray job submit`, the transport forced either way, and an elastic job (`--workers 2:4`
on 3 CPUs) that loses a node, goes on with the survivors and grows back, to the bits of a run
that never lost a worker.

The module starts its own two-node Ray cluster on this machine: a head with 2 CPUs and a worker
node (`ray start --address ... --block`) with 1 CPU, each raylet a node with its own id and
object store, so 3 workers span both nodes (the placement group packs 2 on the head), and
stopping the worker node takes a worker and its CPU away, as losing a machine does. Every run
uses the invariant step, so each is compared bit for bit with one process (`one_process`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.distributed.ray_helpers import (
    Head,
    distnn,
    groups,
    job_submit,
    ray_env,
    ray_train,
    train_killed_once,
)
from tests.distributed.test_mpi_invariance import MODEL, TRAIN, crcs
from tests.train.runs import BIN, metrics, params, wait_for, write_config

pytest.importorskip("ray", reason="ray not installed (pip install 'distnn[ray]')")


class Node:
    """A worker node of `head`'s cluster with 1 CPU, in a session of its own: `lose()` kills it
    all at once (raylet, object store, the worker processes on it), as when a machine fails."""

    def __init__(self, head: Head, tag: str):
        self.log = Path(head.tmp) / f"node-{tag}.log"
        self.head = head
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", head.address, "--block", "--num-cpus", "1",
             "--node-ip-address", "127.0.0.1", "--disable-usage-stats"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env=ray_env(),
            start_new_session=True)

    def wait_joined(self, cpus: int, timeout=90, free: bool = False):
        """Until the cluster has `cpus` CPUs (`free`: that many not in use)."""
        which = "available_resources" if free else "cluster_resources"
        probe = (f"import ray; ray.init(address='{self.head.address}', logging_level='ERROR'); "
                 f"print(int(ray.{which}().get('CPU', 0)))")

        def joined():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker node exited: {self.log.read_text()[-2000:]}")
            out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                 env=ray_env(), timeout=60)
            return out.stdout.strip().endswith(str(cpus))

        wait_for(joined, timeout, f"{cpus} CPUs in the cluster")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=60)

    def lose(self):
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=60)


# A lost node is declared dead after 3 missed health checks 0.5 s apart (Ray's defaults take
# about 30 s).
FAST_NODE_DEATH = {"RAY_health_check_period_ms": "500", "RAY_health_check_timeout_ms": "500",
                   "RAY_health_check_failure_threshold": "3"}


@pytest.fixture(scope="module")
def cluster():
    head = Head(FAST_NODE_DEATH)
    nodes = []
    try:
        head.wait_ready()
        nodes.append(Node(head, "a"))
        nodes[0].wait_joined(3)
        yield head, nodes
    finally:
        for node in nodes:
            if node.proc.poll() is None:
                node.stop()
        head.stop()


def config(tmp_path, **train):
    return write_config(tmp_path / "c.yaml", model=MODEL, data={"augment": True},
                        train={**TRAIN, **train}, checkpoint={"every_steps": 10})


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("one")
    out = distnn(["train", str(config(tmp)), "--run-dir", str(tmp / "run")])
    assert out.returncode == 0, out.stderr
    return tmp / "run"


# 1 worker: -m slow (the suite's time budget; 3 workers on the two nodes run by default)
@pytest.mark.parametrize("workers", [pytest.param(1, marks=pytest.mark.slow), 3])
def test_ray_workers_compute_the_bits_of_one_process(cluster, one_process, tmp_path, workers):
    head, _ = cluster
    rd = tmp_path / "run"
    # 3 workers: the allreduce overlapped with backward (comm.overlap, the invariant step's
    # exact sum bucket by bucket on the channels' threads) gives one process's bits too.
    out = distnn(["train", str(config(tmp_path)), "--run-dir", str(rd), "--backend", "ray",
                  "--workers", str(workers), "--address", head.address,
                  "--set", f"comm.overlap={str(workers == 3).lower()}",
                  "--set", "comm.bucket_mb=0.01"], timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    [(n, nodes, transport)] = groups(out.stderr)
    if workers == 3:  # 2 on the head, 1 on the worker node: the object store between nodes
        assert (n, len(nodes), transport) == (3, 2, "object_store"), out.stderr
        assert nodes[0] != nodes[1]
    else:
        assert (n, len(nodes), transport) == (1, 1, None), out.stderr
    assert_same_bits(rd, one_process)


def assert_same_bits(rd, one_process):
    assert crcs(rd) == crcs(one_process)
    a, b = params(one_process / "checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_killed_actor_on_two_nodes_is_replaced_and_resumes_the_bits(cluster, one_process,
                                                                    tmp_path):
    """Rank 1 of 3 is SIGKILLed at step 15 (the step-10 checkpoint written); the driver restarts
    the group on both nodes, which resumes from last.h5 to the bits of one process."""
    rd = tmp_path / "killed"
    out, _ = train_killed_once(cluster[0], config(tmp_path), rd, 0, 15, workers=3)
    assert [(n, len(nodes), t) for n, nodes, t in groups(out.stderr)] == \
        [(3, 2, "object_store")] * 2, out.stderr
    assert_same_bits(rd, one_process)


def test_ray_job_submit_trains_with_the_object_store_forced_on_one_node(cluster, one_process,
                                                                       tmp_path):
    """`ray job submit` to the head's job server; the 2 workers fit on the head, where "auto"
    would choose shared memory: comm.transport=object_store forces the object store."""
    rd = tmp_path / "job"
    out = job_submit(cluster[0], config(tmp_path), "--workers", "2", "--run-dir", rd, "--set",
                     "comm.transport=object_store")
    text = out.stdout + out.stderr
    assert out.returncode == 0 and "succeeded" in text and "test accuracy" in text, text
    assert [(n, len(nodes), t) for n, nodes, t in groups(text)] == [(2, 1, "object_store")], text
    assert_same_bits(rd, one_process)


def test_shared_memory_forced_across_two_nodes_is_one_clear_error(cluster, tmp_path):
    """The driver sees where the actors landed before they build their communicators (each
    would abort, and Ray would echo every rank's message): one error line, exit 2."""
    out = ray_train(cluster[0], config(tmp_path), tmp_path / "r", "--set",
                    "comm.transport=shm", workers=3, timeout=120)  # timeout: a hang guard
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        "distnn[ray]: error: comm.transport=shm needs every rank on one x86-64 node, but the 3 "
        "workers are on 2 nodes; use comm.transport=auto (shared memory when they share one, "
        "else the object store) or object_store"), out.stderr
    assert out.stderr.count("error") == 1 and out.stderr.count("x86-64") == 1, out.stderr
    assert not (tmp_path / "r/metrics.jsonl").exists()


# The driver, with worker actors that take 0.3 s per step while the group has 2 workers (so the
# lost node has time to come back and the group to grow), 0.1 s otherwise (so that the node is
# lost mid-run). Sleeping changes no number: the test compares bits.
SLOW_WHEN_SMALL = """
import sys, time
import distnn.launch.ray_driver as driver
from distnn.launch.ray_worker import Worker


class Slow(Worker):
    def run(self, *args, **kwargs):
        from distnn.train import loop
        train_step = loop.Coordinator.train_step

        def patched(coord, *a, **kw):
            time.sleep(0.3 if coord.comm.size == 2 else 0.1)
            return train_step(coord, *a, **kw)

        loop.Coordinator.train_step = patched
        return super().run(*args, **kwargs)


driver.Worker = Slow
from distnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_elastic_job_loses_a_node_goes_on_and_grows_back_to_the_same_bits(cluster, tmp_path):
    head, nodes = cluster
    cfg = config(tmp_path, max_steps=120, eval_every_steps=10)
    straight = tmp_path / "straight"
    out = distnn(["train", str(cfg), "--run-dir", str(straight)])
    assert out.returncode == 0, out.stderr
    script, log, rd = tmp_path / "slow.py", tmp_path / "driver.log", tmp_path / "elastic"
    script.write_text(SLOW_WHEN_SMALL)
    nodes[0].wait_joined(3, free=True)  # the runs before have given their CPUs back
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(script), "train", str(cfg), "--run-dir", str(rd), "--backend",
             "ray", "--workers", "2:4", "--address", head.address, "--max-failures", "1",
             "--set", "comm.replace_timeout=2"], stdout=fh, stderr=subprocess.STDOUT,
            env=ray_env())
    try:
        text = log.read_text
        # 3 CPUs for at most 4 workers: it starts on 3
        wait_for(lambda: "elastic: starting on 3 workers (2 to 4)" in text(), 120, "3 workers")
        wait_for(lambda: (rd / "metrics.jsonl").exists() and any(
            m.get("step", 0) >= 20 for m in metrics(rd)), 120, "step 20")
        nodes[0].lose()  # the node of one worker goes away, with its CPU
        wait_for(lambda: "on 2 workers (elastic: no CPU for a replacement within "
                 "comm.replace_timeout 2 s)" in text(), 120, "the shrink")
        nodes.append(Node(head, "b"))  # a CPU comes back
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = log.read_text()
    assert proc.returncode == 0, out
    assert "died" in out and "elastic: 1 CPU(s) free, growing: asking rank 0" in out, out
    assert "elastic: restarting on 3 workers" in out, out
    a, b = params(straight / "checkpoints/last.h5"), params(rd / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    # Steps redone after a restart log their lines again, with the same parameters.
    want = dict(((s, t), c) for s, t, c in crcs(straight)[0])
    got = crcs(rd)[0]
    assert {(s, t) for s, t, _ in got} == set(want)
    assert all(want[(s, t)] == c for s, t, c in got)
    assert crcs(rd)[1] == crcs(straight)[1]


@pytest.mark.parametrize("args, message", [
    (["--workers", "3:2"], "--workers 3:2: MIN 3 > MAX 2; expected MIN <= MAX"),
    (["--workers", "0:2"], "--workers 0:2: MIN 0 < 1; expected at least one worker"),
    (["--workers", "2:x"], "--workers '2:x': expected N or MIN:MAX (integers)"),
    (["--workers", "2:9"], "--workers 2:9: 9 workers cannot share train.groups 8 groups; "
                           "expected MAX <= 8 (or raise train.groups)"),
    (["--workers", "1:2", "--set", "train.invariant=false"],
     "--workers 1:2: an elastic range needs train.invariant: true (the plain step computes "
     "other numbers on another number of workers)"),
    (["--set", "comm.workers_min=3", "--set", "comm.workers=2"],
     "comm.workers_min 3 / comm.workers 2: MIN 3 > MAX 2; expected MIN <= MAX"),
])
def test_a_bad_worker_range_is_one_clear_error(tmp_path, args, message):
    out = distnn(["train", str(config(tmp_path)), "--backend", "ray", *args,
                  "--run-dir", str(tmp_path / "r")], timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith(message), out.stderr
    assert out.stderr.count("error:") == 1, out.stderr
    assert not (tmp_path / "r").exists()


def test_an_elastic_range_with_per_worker_batchnorm_is_one_clear_error(tmp_path):
    model = [dict(spec, sync=False) if spec["type"] == "batchnorm" else spec for spec in MODEL]
    cfg = write_config(tmp_path / "c.yaml", model=model, train=TRAIN)
    out = distnn(["train", str(cfg), "--backend", "ray", "--workers", "1:2", "--run-dir",
                  str(tmp_path / "r")], timeout=60)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines()[-1].endswith(
        "--workers 1:2: an elastic range needs synced BatchNorm, but layer 1 has sync: false "
        "(per-worker statistics change with the number of workers)"), out.stderr
