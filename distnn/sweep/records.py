"""The sweep directory's records: what each trial was, how it ended, and how it ranks.

A sweep directory holds:
- `sweep.yaml`: the sweep as run (every default filled in, the seed, the base config resolved
  to a path or bundled name).
- `trials.jsonl`: one JSON line per event of a trial, appended under a lock (several processes
  write it: the local driver's threads, SLURM array tasks, Ray Tune trainables). The newest line
  of a trial is its state. Keys:
  - `trial` (its id, "s<stage>-t<index>", also its run directory's name), `stage`, `index`
  - `params`: {dotted config key: value} as sampled
  - `status`: "running" | "finished" | "diverged" | "stopped_asha" | "failed" | "interrupted"
  - `metric`: the best value of the sweep's metric over the trial's epoch ends (the mean over
    folds with cross-validation), null if none; `metric_std`: the spread over folds (null
    without folds); `fold_metrics`: one value per fold (null without folds)
  - `epochs`: epochs completed (the most over folds), `wall_s`: seconds the trial ran
  - `reason`: why it stopped, one line
  - `members`: its run directories relative to the sweep directory (one, or one per fold)
- `<trial>/` (or `<trial>/fold-<i>/`): ordinary run directories (config.yaml, metrics.jsonl,
  checkpoints/), so `distnn plot` and `distnn evaluate` work on each.
"""

from __future__ import annotations

import fcntl
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TRIALS = "trials.jsonl"
STOP_FILE = "stop-request"  # present: every trial runner stops its run (after a checkpoint)
FINAL = ("finished", "diverged", "stopped_asha", "failed")  # a resumed sweep does not rerun these
LOWER_IS_BETTER = {"val_loss": True, "val_accuracy": False}


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive fcntl lock on `path`.lock for the block (processes on one file system)."""
    with open(path.with_name(path.name + ".lock"), "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def append_line(path: Path, record: dict) -> None:
    """Append one JSON line to `path` (one write under the lock, flushed)."""
    line = json.dumps(record, allow_nan=False) + "\n"
    with locked(path), open(path, "a") as fh:
        fh.write(line)
        fh.flush()


def append_record(sweep_dir: Path, record: dict) -> None:
    """Append one trial line to trials.jsonl."""
    append_line(Path(sweep_dir) / TRIALS, record)


def read_trials(sweep_dir: Path) -> dict[str, dict]:
    """{trial id: its newest record}, in the order trials first appear. A torn last line (a
    writer killed mid-write) is skipped."""
    path = Path(sweep_dir) / TRIALS
    out: dict[str, dict] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and "trial" in rec:
            out[rec["trial"]] = rec
    return out


def epoch_ends(metrics: Path, metric: str) -> dict[int, float]:
    """{epoch: the metric at its end} from a run's metrics.jsonl: a validation line after its
    epoch's train line (a mid-epoch validation comes before it). An epoch run again (a resumed
    or restarted run) keeps its newest line. Unreadable lines (the one being written) are
    skipped; {} when the file is missing."""
    try:
        text = Path(metrics).read_text(errors="replace")
    except OSError:
        return {}
    key = metric.removeprefix("val_")
    trained: set = set()
    found: dict[int, float] = {}
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        if rec.get("split") == "train":
            trained.add(rec.get("epoch"))
        elif rec.get("split") == "val" and rec.get("epoch") in trained \
                and isinstance(rec.get(key), (int, float)):
            found[int(rec["epoch"])] = float(rec[key])
    return found


def ranked(records: dict[str, dict] | list[dict], metric: str) -> list[dict]:
    """The trials that ended with a metric, best first (ties: the earlier stage, then the lower
    index). A running or interrupted trial's metric is partial: it is not ranked."""
    rows = list(records.values()) if isinstance(records, dict) else list(records)
    scored = [r for r in rows if r.get("status") in FINAL
              and isinstance(r.get("metric"), (int, float)) and math.isfinite(r["metric"])]
    sign = 1.0 if LOWER_IS_BETTER[metric] else -1.0
    return sorted(scored, key=lambda r: (sign * r["metric"], r["stage"], r["index"]))
