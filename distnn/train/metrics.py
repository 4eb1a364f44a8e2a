"""metrics.jsonl (one JSON object per line, rank 0 only) and the rank-0 progress bar."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from distnn import console


def _clean(value):
    # JSON has no NaN/inf: write them as strings so every line stays parseable.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


class MetricsLog:
    """Appends records to <run_dir>/metrics.jsonl on rank 0; no-op elsewhere. Each record also
    goes to every callable in `sinks` (TensorBoard)."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled
        self.failed = False
        self.sinks: list[Callable[[dict], None]] = []

    def write(self, **record) -> None:
        """Append one line and print its summary on stdout."""
        self.add(record, echo=True)

    def add(self, record: dict, echo: bool = False) -> None:
        """Append one line (`echo`: and print its summary). A failed write (disk full) is one
        warning, once: the run goes on (metrics are rank 0's alone; ending the job is for the
        checkpoint writes, exit 74)."""
        if not self.enabled:
            return
        try:
            with open(self.path, "a") as fh:
                fh.write(json.dumps(_clean(record)) + "\n")
        except OSError as exc:
            if not self.failed:
                console.err(f"distnn train: warning: could not write {self.path}: "
                            f"{exc.strerror or exc}; its later lines are lost")
            self.failed = True
        for sink in self.sinks:
            sink(record)
        if echo:
            print(summary_line(record), flush=True)


def progress(total: int, initial: int, epoch: int, enabled: bool):
    """A tqdm bar for one epoch on rank 0 when stderr is a terminal (disabled elsewhere: batch
    logs get one summary line per epoch instead)."""
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}",
                disable=not (enabled and sys.stderr.isatty()),
                leave=False, dynamic_ncols=True, unit="step")


def summary_line(record: dict) -> str:
    """One human-readable line per logged record, for rank 0's stdout."""
    parts = [f"epoch {record['epoch']}", f"step {record['step']}", f"{record['split']:<5}",
             f"loss {record['loss']:.4f}", f"acc {record['accuracy']:.4f}"]
    if "lr" in record:
        parts.append(f"lr {record['lr']:.3g}")
    if "images_per_s" in record:
        parts.append(f"{record['images_per_s']:.0f} img/s")
    return "  ".join(parts)
