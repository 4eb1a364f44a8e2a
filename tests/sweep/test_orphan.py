"""A trial's `distnn train` gets SIGTERM (then checkpoints and exits) when the sweep process
that started it dies, even by SIGKILL; a process whose parent is not the sweep (an MPI rank
under mpiexec) is left alone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from distnn.sweep.orphan import PARENT_ENV

CHILD = """
import os, signal, sys, time
flag = sys.argv[1]
signal.signal(signal.SIGTERM, lambda *a: (open(flag, "w").write("term"), os._exit(0)))
from distnn.sweep.orphan import die_with_sweep
die_with_sweep()
open(flag + ".ready", "w").write("ready")
time.sleep(60)
"""

# The "sweep": starts the child with PARENT_ENV naming itself (or `pid`), then waits.
SWEEP = """
import os, subprocess, sys, time
env = dict(os.environ, {key}=sys.argv[2] or str(os.getpid()))
child = subprocess.Popen([sys.executable, "-c", sys.argv[3], sys.argv[1]], env=env)
print(child.pid, flush=True)
time.sleep(60)
"""


def start(tmp_path: Path, parent: str) -> tuple[subprocess.Popen, int, Path]:
    flag = tmp_path / "flag"
    sweep = subprocess.Popen([sys.executable, "-c", SWEEP.format(key=PARENT_ENV), str(flag),
                              parent, CHILD], stdout=subprocess.PIPE, text=True)
    child = int(sweep.stdout.readline())
    deadline = time.monotonic() + 60
    while not Path(str(flag) + ".ready").exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    return sweep, child, flag


def test_the_trial_gets_sigterm_when_the_sweep_is_killed(tmp_path):
    sweep, child, flag = start(tmp_path, "")
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    deadline = time.monotonic() + 30
    while not flag.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert flag.read_text() == "term"


def test_a_process_of_another_parent_is_left_alone(tmp_path):
    sweep, child, flag = start(tmp_path, "1")  # names a pid that is not its parent
    sweep.send_signal(signal.SIGKILL)
    sweep.wait()
    time.sleep(1.0)
    assert not flag.exists()
    os.kill(child, signal.SIGKILL)
