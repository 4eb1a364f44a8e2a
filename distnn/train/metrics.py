"""metrics.jsonl (one JSON object per line, rank 0 only) and the rank-0 progress bar."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tqdm import tqdm


def _clean(value):
    # JSON has no NaN/inf: write them as strings so every line stays parseable.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


class MetricsLog:
    """Appends records to <run_dir>/metrics.jsonl on rank 0; no-op elsewhere."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = Path(path), enabled

    def write(self, **record) -> None:
        if self.enabled:
            with open(self.path, "a") as fh:
                fh.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")


def progress(total: int, initial: int, epoch: int, enabled: bool):
    """A tqdm bar for one epoch on rank 0 (a disabled bar elsewhere)."""
    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", disable=not enabled,
                leave=False, dynamic_ncols=True, unit="step")
