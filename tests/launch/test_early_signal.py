"""`distnn train` takes a stop request from its first moment: a SIGTERM that arrives while the
process is still importing ends it with 75 (not -15), and the resume equals an uninterrupted
run. The signal is sent as soon as /proc shows the handler in place: no timing."""

import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.train.runs import params, run, start, wait_for, write_config


def catches(pid: int, sig: int) -> bool:
    """Whether process `pid` has a handler for `sig` (the SigCgt mask of /proc/pid/status)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    mask = next(int(line.split()[1], 16) for line in status.splitlines()
                if line.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


def test_sigterm_during_startup_ends_resumably(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 12})
    straight = run(["train", str(cfg), "--run-dir", str(tmp_path / "straight")])
    assert straight.returncode == 0, straight.stderr
    rd = tmp_path / "stopped"
    proc = start(["train", str(cfg), "--run-dir", str(rd)])
    wait_for(lambda: catches(proc.pid, signal.SIGTERM) or proc.poll() is not None, 60,
             "the SIGTERM handler")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    resumed = run(["train", str(cfg), "--run-dir", str(rd), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    a = params(tmp_path / "straight/checkpoints/last.h5")
    b = params(rd / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)


PROBE = """
import signal, sys
seen = []

class Probe:
    def find_spec(self, name, path=None, target=None):
        if name == "numpy" and not seen:
            seen.append(signal.getsignal(signal.SIGTERM))
        return None

sys.meta_path.insert(0, Probe())
sys.argv = ["distnn", "train"]
import distnn.cli
from distnn.train import signals
print(seen[0] == signals._REQUEST.handle)
"""


def test_the_handler_is_in_place_before_the_heavy_imports():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"
