"""A trial's `distnn train` ends with the sweep that started it (light: the CLI imports it
before numpy when it runs under a sweep)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal

PARENT_ENV = "DISTNN_SWEEP_PARENT"  # the pid of the sweep process that started a trial


def die_with_sweep() -> None:
    """In a trial's `distnn train` (cli.py calls it first thing): SIGTERM when the sweep thread
    that started it ends, so it checkpoints and exits (Linux: PR_SET_PDEATHSIG; elsewhere
    nothing). Only in the sweep's direct child: MPI ranks, whose parent is mpiexec's proxy,
    are stopped by their signal group."""
    parent = os.environ.get(PARENT_ENV)
    if not parent or not parent.isdigit() or os.getppid() != int(parent):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != int(parent):  # the parent died before the request took
        os.kill(os.getpid(), signal.SIGTERM)
