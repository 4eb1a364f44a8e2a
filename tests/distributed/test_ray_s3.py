"""Issue 16 part 5 on real Ray: a run directory in an object store survives the node of rank 0.

A two-node cluster on this machine (a head with 2 CPUs, a worker node with 1) and a real
S3-compatible server (moto, tests/storage/store.py). A `--backend ray --max-failures 1` run
writes into s3://...; rank 0 is pinned to the worker node; that node is lost mid-run (its
raylet, its worker processes and so the staging directory of rank 0, all at once) and a new
node joins. The worker group restarts with rank 0 on the new node, which has nothing local: it
resumes from the store, and the run ends with the bits of an uninterrupted one-process run.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from tests.distributed.ray_helpers import Head, distnn, groups, ray_env
from tests.distributed.test_mpi_invariance import MODEL, TRAIN, crcs
from tests.distributed.test_ray_elastic import FAST_NODE_DEATH, Node
from tests.storage.store import BUCKET, fetch, keys, start_store
from tests.train.runs import params, wait_for, write_config

pytest.importorskip("ray", reason="ray not installed (pip install 'distnn[ray]')")

# The driver, with its placement group spread over the two nodes and bundle 1 (rank 1) on the
# head, so rank 0 runs on the worker node; the actors take 0.2 s per step (sleeping changes no
# number: the test compares bits) so that the node is lost mid-run. A restarted group reuses
# the placement group, whose bundle 0 Ray moves to the node that replaces the lost one.
PINNED = """
import sys, time
import ray
from ray.util.placement_group import placement_group
import distnn.launch.ray_driver as driver
from distnn.launch.ray_worker import Worker


def reserve(count, where, timeout=60):
    pg = placement_group([{"CPU": 1}, {"CPU": 1, "node:__internal_head__": 0.001}],
                         strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=timeout)
    return pg


class Slow(Worker):
    def run(self, *args, **kwargs):
        from distnn.train import loop
        train_step = loop.Coordinator.train_step

        def patched(coord, *a, **kw):
            time.sleep(0.2)
            return train_step(coord, *a, **kw)

        loop.Coordinator.train_step = patched
        return super().run(*args, **kwargs)


driver.reserve, driver.Worker = reserve, Slow
from distnn.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def world():
    with pytest.MonkeyPatch.context() as mp:
        store = start_store(mp)  # its environment reaches Ray's nodes and so the actors
        head = Head(FAST_NODE_DEATH)
        nodes: list[Node] = []
        try:
            head.wait_ready()
            nodes.append(Node(head, "a"))
            nodes[0].wait_joined(3)
            yield store, head, nodes
        finally:
            for node in nodes:
                if node.proc.poll() is None:
                    node.stop()
            head.stop()
            store.stop()


# About 80 s here under load (the cluster alone starts in 15-40 s): over the default suite's
# budget, so it runs with -m slow.
@pytest.mark.slow
def test_rank_0_restarted_on_another_node_resumes_from_the_store(world, tmp_path):
    store, head, nodes = world
    cfg = write_config(tmp_path / "c.yaml", model=MODEL, data={"augment": True},
                       train={**TRAIN, "max_steps": 40}, checkpoint={"every_steps": 10})
    straight = tmp_path / "straight"
    out = distnn(["train", str(cfg), "--run-dir", str(straight)])
    assert out.returncode == 0, out.stderr
    script, log, rd = tmp_path / "pinned.py", tmp_path / "driver.log", f"s3://{BUCKET}/ray"
    script.write_text(PINNED)
    fs = store.fs()
    with log.open("w") as fh:
        proc = subprocess.Popen(
            [sys.executable, str(script), "train", str(cfg), "--run-dir", rd, "--backend",
             "ray", "--workers", "2", "--address", head.address, "--max-failures", "1"],
            stdout=fh, stderr=subprocess.STDOUT, env=ray_env())
    try:
        wait_for(lambda: "checkpoints/step-000010.h5" in keys(fs, "ray"), 180,
                 "the checkpoint of step 10 in the store")
        nodes[0].lose()  # rank 0's node, with its staging directory
        nodes.append(Node(head, "b"))  # a new machine takes its place
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "restarting the worker group (1 of --max-failures 1)" in text, text
    assert f"resuming from {rd}/checkpoints/last.h5" in text, text
    first, second = groups(text)[:2]
    assert len(first[1]) == len(second[1]) == 2  # each group spans two nodes
    assert second[1][0] not in first[1], text  # rank 0 restarted on the new node
    done = fetch(fs, "ray", tmp_path / "ray")
    a, b = params(straight / "checkpoints/last.h5"), params(done / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert crcs(done)[1] == crcs(straight)[1]  # the test line's numbers
    assert "distnn.lock" not in keys(fs, "ray")
