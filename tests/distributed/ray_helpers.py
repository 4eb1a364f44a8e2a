"""A real Ray head started by a test module, and the `distnn train --backend ray` runs the Ray
tests share: the one-node module (test_ray_training.py) and the two-node one
(test_ray_elastic.py) run the same actor-death and `ray job submit` scenarios through these.

A head is ended by its pid (SIGTERM to the blocking `ray start`, which stops the processes it
started; never a machine-wide `ray stop`).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.train.runs import BIN, wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env() -> dict:
    e = dict(os.environ)
    e["RAY_AUTH_MODE"] = "disabled"  # Ray 2.60: else `ray start`/`ray job submit` want a token
    e.setdefault("PYTHONUNBUFFERED", "1")
    e.pop("RAY_ADDRESS", None)
    return e


class Head:
    """`ray start --head --block` on loopback with 2 CPUs and the dashboard (so that the job
    server of `ray job submit` runs); `env` adds to its environment."""

    def __init__(self, env: dict | None = None):
        self.port, self.dash = free_port(), free_port()
        self.tmp = tempfile.mkdtemp(prefix="dnray-")  # short: Ray socket paths < 108 chars
        self.log = Path(self.tmp) / "head.log"
        self.proc = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
             "--port", str(self.port), "--num-cpus", "2", "--include-dashboard=true",
             "--dashboard-host", "127.0.0.1", "--dashboard-port", str(self.dash),
             "--temp-dir", self.tmp, "--disable-usage-stats"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT, env={**ray_env(), **(env or {})})

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_ready(self, timeout=90):
        import urllib.request

        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"ray start exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.dash}/api/version",
                                            timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_for(up, timeout, "the Ray head's dashboard")

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)  # `ray start --block` stops what it started
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def distnn(args, timeout=240, **kw):
    return subprocess.run([str(BIN / "distnn"), *args], capture_output=True, text=True,
                          timeout=timeout, env=ray_env(), **kw)


def ray_train(head, cfg, run_dir, *extra, workers=2, timeout=240):
    return distnn(["train", str(cfg), "--run-dir", str(run_dir), "--backend", "ray",
                   "--workers", str(workers), "--address", head.address, *extra],
                  timeout=timeout)


# The driver's line once a group runs (launch/ray_driver.py), e.g. "3 workers on 2 nodes (node
# ids 9f1c2a7b.., 04de88c1..), transport object_store".
GROUP_LINE = re.compile(r"distnn\[ray\]: (\d+) workers? on (\d+) nodes? \(node ids? "
                        r"([0-9a-f., ]+)\), (?:transport (\w+)|no transport \(one worker\))")


def groups(text: str) -> list[tuple[int, list[str], str | None]]:
    """(workers, node ids, transport) of every group line in a driver's output, in order; the
    transport is None for a group of one."""
    found = []
    for m in GROUP_LINE.finditer(text):
        nodes = [n.strip().rstrip(".") for n in m.group(3).split(",")]
        assert len(nodes) == int(m.group(2)), m.group(0)
        found.append((int(m.group(1)), nodes, m.group(4)))
    return found


def job_submit(head, *args, timeout=240):
    """`ray job submit -- python launch/ray_train.py ARGS` to `head`'s job server."""
    return subprocess.run(
        [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{head.dash}", "--",
         sys.executable, str(ROOT / "launch/ray_train.py"), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=ray_env())


# A `distnn train --backend ray` driver whose worker actors are a test subclass (pickled by value
# from this script, so the actors need no test code on their path): rank 1 of the first worker
# group SIGKILLs itself on entering step STEP of epoch EPOCH (choose them after a checkpoint that
# every rank has learnt was written). The marker file (created with O_EXCL, holding the pid)
# makes it happen once: the replacement group's rank 1 trains on.
KILL_ONCE = """
import os, signal, sys
import distnn.launch.ray_driver as driver
from distnn.launch.ray_worker import Worker

MARKER, EPOCH, STEP = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])


def die_once():
    try:
        fd = os.open(MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    except FileExistsError:
        return
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


class KilledOnce(Worker):
    def run(self, *args, **kwargs):
        if self.comm.rank == 1:
            from distnn.train import loop
            train_step = loop.Coordinator.train_step

            def patched(coord, *a, **kw):
                if (coord.state.epoch, coord.state.step_in_epoch) == (EPOCH, STEP):
                    die_once()
                return train_step(coord, *a, **kw)

            loop.Coordinator.train_step = patched
        return super().run(*args, **kwargs)


driver.Worker = KilledOnce
from distnn.cli import main
sys.exit(main(sys.argv[4:]))
"""


def train_killed_once(head, cfg, rd: Path, epoch: int, step: int,
                      workers: int = 2) -> tuple[subprocess.CompletedProcess, int]:
    """`distnn train` on `workers` Ray actors with --max-failures 1, rank 1 killed once at
    (epoch, step). Returns the driver's result and the killed pid, having checked that the
    kill happened, the driver saw that pid die and restarted the group from last.h5."""
    script, marker = rd.parent / f"{rd.name}-kill_once.py", rd.parent / f"{rd.name}-killed.pid"
    script.write_text(KILL_ONCE)
    out = subprocess.run(
        [sys.executable, str(script), str(marker), str(epoch), str(step), "train", str(cfg),
         "--run-dir", str(rd), "--backend", "ray", "--workers", str(workers), "--address",
         head.address, "--max-failures", "1"],
        capture_output=True, text=True, timeout=300, env=ray_env())  # timeout: a hang guard
    text = out.stdout + out.stderr
    assert out.returncode == 0, text
    assert marker.exists(), f"rank 1 never reached epoch {epoch} step {step}: {text}"
    pid = int(marker.read_text())
    assert f"rank 1 of {workers} is pid {pid} " in text, text
    assert re.search(rf"worker rank 1 \(pid {pid} on .*\) died .*restarting the worker group "
                     rf"\(1 of --max-failures 1\) on {workers} workers, resuming from "
                     rf".*last\.h5", text), text
    return out, pid
