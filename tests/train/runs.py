"""Helpers to run `distnn train` for real: in a subprocess, alone or under mpiexec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from distnn.data import get_dataset

BIN = Path(sys.executable).parent

TINY_MODEL = [
    {"type": "conv", "filters": 6, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
    {"type": "maxpool", "size": 2},
    {"type": "flatten"}, {"type": "dense", "units": 10},
]


def write_config(path: Path, **sections) -> Path:
    """A small config on the bundled mini MNIST; keyword sections update the defaults."""
    cfg = {
        "name": "tiny", "seed": 1, "model": TINY_MODEL,
        "data": {"dataset": "mini_mnist", "val_size": 500},
        "train": {"epochs": 2, "global_batch": 32, "consistency_every": 1},
        "optimizer": {"name": "momentum", "mu": 0.9},
        "schedule": {"name": "constant", "base_lr": 0.02},
        "early_stopping": {"enabled": False},
    }
    for key, value in sections.items():
        if isinstance(value, dict):
            cfg.setdefault(key, {}).update(value)
        else:
            cfg[key] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def mpiexec() -> str:
    pytest.importorskip("mpi4py", reason="mpi4py not installed (pip install 'distnn[mpi]')")
    exe = BIN / "mpiexec"
    if not exe.exists():
        found = shutil.which("mpiexec")
        if not found:
            pytest.skip("no mpiexec found (pip install 'distnn[mpi]' brings mpich's)")
        return found
    return str(exe)


def tiny_checkpoint(tmp: Path, steps: int) -> Path:
    """Train TINY_MODEL for `steps` steps on mini MNIST with `distnn train` in `tmp`; its
    checkpoints/last.h5."""
    cfg = write_config(tmp / "tiny.yaml", train={"epochs": 1, "max_steps": steps})
    done = run(["train", str(cfg), "--run-dir", str(tmp / "run")])
    assert done.returncode == 0, done.stderr
    return tmp / "run" / "checkpoints" / "last.h5"


def command(args: list[str], ranks: int | None) -> list[str]:
    base = [str(BIN / "distnn")] + args
    return base if ranks is None else [mpiexec(), "-n", str(ranks)] + base


def env() -> dict:
    e = dict(os.environ)
    e.setdefault("PYTHONUNBUFFERED", "1")
    return e


def run(args: list[str], ranks: int | None = None, timeout: float = 300, cwd=None):
    """Run to completion; returns CompletedProcess (text)."""
    return subprocess.run(command(args, ranks), capture_output=True, text=True,
                          timeout=timeout, env=env(), cwd=cwd)


def start(args: list[str], ranks: int | None = None, cwd=None) -> subprocess.Popen:
    return subprocess.Popen(command(args, ranks), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env(), cwd=cwd)


@contextmanager
def running(args: list[str], ranks: int | None = None, cwd=None):
    """`start` for a `with` block: a run still alive when the block ends is killed."""
    proc = start(args, ranks, cwd)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def steps_per_epoch(global_batch: int, val_size: int = 500) -> int:
    """Steps in an epoch of `write_config`'s mini MNIST: the training split less the validation
    images, in global batches (the last, partial one kept)."""
    return -(-(len(get_dataset("mini_mnist", "train")) - val_size) // global_batch)


# A `distnn` command in whose process the rank RANK runs the Python statement FAULT on entering
# the training step STEP (0-based) of epoch EPOCH, before that step reads the stop flag: a fixed
# point of the run, whatever the timing. sys.argv is set first, so the CLI starts as
# `distnn train ...` does (stop handlers held from its first import).
STEP_FAULT = """
import os, signal, sys
EPOCH, STEP, RANK, FAULT = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sys.argv = ["distnn", *sys.argv[5:]]
from distnn.cli import main
from distnn.train import loop

train_step = loop.Coordinator.train_step


def patched(coord, *a, **kw):
    if coord.comm.rank == RANK and (coord.state.epoch, coord.state.step_in_epoch) == (EPOCH, STEP):
        exec(FAULT)
    return train_step(coord, *a, **kw)


loop.Coordinator.train_step = patched
sys.exit(main(sys.argv[1:]))
"""


def run_with_step_fault(tmp_path: Path, fault: str, epoch: int, step: int, args: list[str],
                        ranks: int | None = None, rank: int = 0, timeout: float = 300):
    """`distnn ARGS` (alone, or on `ranks` MPI ranks) where rank `rank` runs the Python
    statement `fault` (os, signal and sys imported) on entering step `step` of epoch `epoch`.
    E.g. "signal.raise_signal(signal.SIGUSR1)": the handler runs before raise_signal returns, so
    that very step carries the stop request, is dropped, and last.h5 holds the state at
    epoch * steps_per_epoch + step. The timeout is a hang guard."""
    script = tmp_path / "step_fault.py"
    script.write_text(STEP_FAULT)
    cmd = [sys.executable, str(script), str(epoch), str(step), str(rank), fault, *args]
    if ranks is not None:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def params(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as fh:
        return {k: np.array(v) for k, v in fh["model"].items()}


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


EPOCH_SPLITS = ("train", "val", "test", "rollback")  # not the step, layers and warning lines


def epoch_lines(run_dir: Path) -> list[dict]:
    """The metrics lines of epochs, validations, the test and rollbacks."""
    return [m for m in metrics(run_dir) if m["split"] in EPOCH_SPLITS]
