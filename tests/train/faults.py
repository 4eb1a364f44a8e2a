"""Deterministic faults in a real `distnn train` process (alone or under mpiexec): a wrapper
script patches the checkpoint writer of rank 0 to die (SIGKILL) or fail (OSError) at a chosen
point of its n-th checkpoint write, then runs the `distnn` CLI. Nothing depends on timing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from tests.train.runs import env, mpiexec

# Where in the n-th write of checkpoints/step-<n>.h5 + last.h5 the fault strikes: before it,
# while HDF5 builds the file in memory, half-way through writing the temp file, after the step
# file is in place but before last.h5 links it, before old step files are pruned.
PHASES = ("before-write", "mid-encode", "mid-file", "before-link", "before-prune")

SCRIPT = '''
import errno, os, signal, sys
import h5py
import distnn.train.checkpoint as ck
import distnn.train.retention as ret

SAVE, PHASE, KILL = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "kill"
count = [0]


def fault(where):
    if KILL:
        os.kill(os.getpid(), signal.SIGKILL)
    raise OSError(errno.ENOSPC, f"No space left on device (injected {where})")


def at(phase, fn):
    def wrapped(*args, **kwargs):
        if count[0] == SAVE and PHASE == phase:
            fault(phase)
        return fn(*args, **kwargs)
    return wrapped


orig_save_step, orig_create = ret.save_step, h5py.Group.create_dataset
datasets = [0]


def save_step(snap, folder, keep):
    count[0] += 1
    return at("before-write", orig_save_step)(snap, folder, keep)


def create_dataset(self, *args, **kwargs):
    if count[0] == SAVE and PHASE == "mid-encode":
        datasets[0] += 1
        if datasets[0] == 3:  # two arrays in, the file incomplete
            fault("mid-encode")
    return orig_create(self, *args, **kwargs)


orig_write = ck.write_bytes


def write_bytes(fd, data):
    if count[0] == SAVE and PHASE == "mid-file":
        os.write(fd, data[:len(data) // 2])
        fault("mid-file")
    return orig_write(fd, data)


ret.save_step, h5py.Group.create_dataset = save_step, create_dataset
ck.write_bytes = write_bytes
ret.link_last = at("before-link", ret.link_last)
ret.prune = at("before-prune", ret.prune)
from distnn.cli import main
sys.exit(main(sys.argv[4:]))
'''


def run_with_fault(tmp_path: Path, args: list[str], save: int, phase: str, kill: bool,
                   ranks: int | None = None, timeout: float = 300):
    """Run `distnn ARGS` with the fault at checkpoint write number `save` (1-based)."""
    assert phase in PHASES
    script = tmp_path / "fault.py"
    script.write_text(SCRIPT)
    cmd = [sys.executable, str(script), str(save), phase, "kill" if kill else "raise", *args]
    if ranks is not None:
        cmd = [mpiexec(), "-n", str(ranks), *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env())


def flip_random_bits(folder: Path, rng: np.random.Generator, flips: int) -> list[str]:
    """Flip `flips` random bits in random checkpoint files of `folder`; returns what was hit."""
    files = sorted(p for p in folder.glob("*.h5"))
    hit = []
    for _ in range(flips if files else 0):
        path = files[int(rng.integers(len(files)))]
        raw = bytearray(path.read_bytes())
        bit = int(rng.integers(len(raw) * 8))
        raw[bit // 8] ^= 1 << (bit % 8)
        path.write_bytes(bytes(raw))
        hit.append(f"{path.name}@{bit}")
    return hit
