"""Run a module of tests/comm under the mpich `mpiexec` installed next to this interpreter."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def mpiexec() -> str:
    """Path of mpiexec, or skip the test with the reason."""
    pytest.importorskip("mpi4py", reason="mpi4py not installed: pip install 'distnn[mpi]'")
    exe = Path(sys.executable).parent / "mpiexec"  # the mpich wheel puts it in the venv's bin
    if exe.exists():
        return str(exe)
    found = shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec next to the interpreter or on PATH: pip install 'distnn[mpi]'")
    return found


def run_module(ranks: int, module: str, *args: str, timeout: float = 60):
    """`mpiexec -n ranks python -m module args` from the repo root; returns the completed
    process. `timeout` is a hang guard (subprocess.TimeoutExpired fails the test)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "OMPI", "PMIX"))}
    env["PYTHONUNBUFFERED"] = "1"
    # One BLAS thread per rank: these tests oversubscribe 2 cores with 3 ranks.
    env.setdefault("OPENBLAS_NUM_THREADS", "1")
    return subprocess.run([mpiexec(), "-n", str(ranks), sys.executable, "-m", module, *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
