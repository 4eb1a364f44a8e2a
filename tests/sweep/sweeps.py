"""Helpers of the sweep tests: a small base config, sweep files, and `distnn sweep` runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from distnn.sweep.records import read_trials

BIN = Path(sys.executable).parent

# One dense layer on the bundled mini MNIST: an epoch is 28 steps of a few milliseconds, so a
# trial costs mostly its interpreter's start.
BASE = {
    "name": "sweepbase", "seed": 3,
    "model": [{"type": "flatten"}, {"type": "dense", "units": 10, "init": "small"}],
    "data": {"dataset": "mini_mnist", "val_size": 1000},
    "train": {"epochs": 2, "global_batch": 256},
    "optimizer": {"name": "momentum", "mu": 0.9},
    "schedule": {"name": "constant", "base_lr": 0.05},
    "early_stopping": {"enabled": False},
    "log": {"every_steps": 0, "layers_every_steps": 0},
}


def write_sweep(folder: Path, name: str = "sw.yaml", base: dict | None = None, **keys) -> Path:
    """base.yaml and a sweep file beside it in `folder`; `keys` set the sweep's top keys."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "base.yaml").write_text(yaml.safe_dump(base or BASE))
    sweep = {"base": "base.yaml", "seed": 5,
             "space": {"schedule.base_lr": {"loguniform": [1.0e-3, 0.3]}},
             "stages": [{"trials": 3, "epochs": 2}], **keys}
    path = folder / name
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    return path


def sweep(*args, cwd: Path, timeout: float = 300, env: dict | None = None):
    """`distnn sweep ARGS` in `cwd`, to its end."""
    return subprocess.run([str(BIN / "distnn"), "sweep", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


def final(sweep_dir: Path) -> dict[str, dict]:
    return read_trials(sweep_dir)


def epoch_lines(run_dir: Path) -> list[dict]:
    """The epoch-end val lines of a run (each after its epoch's train line)."""
    out, trained = [], set()
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if rec["split"] == "train":
            trained.add(rec["epoch"])
        elif rec["split"] == "val" and rec["epoch"] in trained:
            out.append(rec)
    return out
