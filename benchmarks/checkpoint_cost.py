"""What checkpoint integrity costs: save_checkpoint / load_checkpoint of the cifar10 model's
snapshot (1,116,976 parameters and a momentum buffer of the same size, 8.9 MB) with today's
checkpoint.py (a CRC-32 per array, verified on load) beside the reference, the checkpoint.py of
an earlier commit (default 20858c2: no checksums), in one run.

    python -m benchmarks.checkpoint_cost [--reference REV] [--repeats N]
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

from distnn.config import load_config
from distnn.train import checkpoint as current
from distnn.train.setup import build_model

ROOT = Path(__file__).resolve().parents[1]


def reference_module(rev: str, folder: Path) -> ModuleType:
    """distnn/train/checkpoint.py as it was at `rev`, imported under another name."""
    source = subprocess.run(["git", "show", f"{rev}:distnn/train/checkpoint.py"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout
    path = folder / "reference_checkpoint.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("reference_checkpoint", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def timed(fn, repeats: int) -> tuple[float, float]:
    """(min, median) seconds of `repeats` calls."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", default="20858c2")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp())
    model = build_model(load_config("cifar10"), (32, 32, 3), 10)
    velocity = np.random.default_rng(0).standard_normal(model.params.size).astype(np.float32)
    rows = []
    for name, module in ((f"reference {args.reference}", reference_module(args.reference, folder)),
                         ("CRC-32 per array", current)):
        snap = module.Snapshot(model=model.state_dict(), optimizer={"t": 5, "velocity": velocity},
                               normalization=(np.zeros(3, np.float32), np.ones(3, np.float32)),
                               step=1, epoch=0, step_in_epoch=1, config_yaml="x: 1\n",
                               model_spec=[], coordinator={})
        path = folder / f"{len(rows)}.h5"
        save = timed(lambda m=module, s=snap, p=path: m.save_checkpoint(s, p), args.repeats)
        load = timed(lambda m=module, p=path: m.load_checkpoint(p), args.repeats)
        rows.append((name, save, load))
    print(f"checkpoint of {model.params.size:,} parameters + momentum, {args.repeats} repeats "
          f"(min / median ms)")
    for name, save, load in rows:
        print(f"  {name:22s} save {save[0] * 1e3:6.1f} / {save[1] * 1e3:6.1f}   "
              f"load {load[0] * 1e3:6.1f} / {load[1] * 1e3:6.1f}")
    crc = timed(lambda: current.array_crc(velocity), args.repeats)
    print(f"  array_crc of {velocity.size:,} float32: {crc[0] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
