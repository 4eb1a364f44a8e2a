"""Merge the per-rank Chrome traces of a run (`log.trace: true`) into one file that Perfetto and
chrome://tracing load, and print where the time goes: each rank's mean time per step in every
phase, the slowest rank and its slowest phase.

The per-rank files are train/timeline.py's."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

from distnn import console
from distnn.exit_codes import ExitCode
from distnn.train.timeline import PHASES

FILE = re.compile(r"rank(\d+)\.json")

# -- distnn trace ---------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run trained with log.trace: true")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="the merged trace (default: RUN_DIR/trace.json)")


class TraceError(ValueError):
    """A run directory without readable trace files."""


def load_ranks(run_dir: Path) -> dict[int, dict]:
    """rank -> its trace file's JSON object."""
    folder = run_dir / "trace"
    files = sorted(p for p in folder.glob("rank*.json") if FILE.fullmatch(p.name)) \
        if folder.is_dir() else []
    if not run_dir.is_dir():
        raise TraceError(f"{run_dir}: no such run directory")
    if not files:
        raise TraceError(f"{run_dir}: no trace files (trace/rank<R>.json); expected a run "
                         f"trained with --set log.trace=true")
    traces = {}
    for path in files:
        try:
            data = json.loads(path.read_text())
            if not isinstance(data.get("traceEvents"), list):
                raise ValueError("no traceEvents list")
        except (OSError, ValueError, AttributeError) as exc:
            raise TraceError(f"{path}: not a Chrome trace ({exc})") from None
        traces[int(FILE.fullmatch(path.name).group(1))] = data  # type: ignore[union-attr]
    return traces


def per_step(events: list[dict]) -> dict[str, float]:
    """Mean milliseconds per step of each phase (steps: those with any training phase)."""
    totals: dict[str, float] = {}
    steps = set()
    for ev in events:
        if not isinstance(ev, dict) or ev.get("ph") != "X" \
                or not isinstance(ev.get("dur"), (int, float)) or "name" not in ev:
            continue  # metadata, or not an event of ours
        totals[ev["name"]] = totals.get(ev["name"], 0.0) + ev["dur"] / 1000.0
        if ev["name"] in ("forward", "backward", "allreduce", "update"):
            args = ev.get("args")
            steps.add(args.get("step") if isinstance(args, dict) else None)
    return {name: total / max(len(steps), 1) for name, total in totals.items()}


def merge(traces: dict[int, dict]) -> dict:
    """One trace object holding every rank's events (each rank is a process)."""
    events = [ev for rank in sorted(traces) for ev in traces[rank]["traceEvents"]]
    dropped = {rank: t.get("otherData", {}).get("dropped_events", 0) for rank, t in traces.items()}
    return {"displayTimeUnit": "ms", "otherData": {"ranks": len(traces), "dropped_events": dropped},
            "traceEvents": events}


def report(traces: dict[int, dict]) -> list[str]:
    """The table of mean ms per step, rank by phase, and the slowest rank and phase."""
    table = {rank: per_step(t["traceEvents"]) for rank, t in sorted(traces.items())}
    phases = [p for p in PHASES if any(p in row for row in table.values())]
    lines = ["ms per step  " + "".join(f"{p:>12}" for p in phases) + f"{'total':>12}"]
    for rank, row in table.items():
        lines.append(f"rank {rank:<7} " + "".join(f"{row.get(p, 0.0):12.2f}" for p in phases)
                     + f"{sum(row.get(p, 0.0) for p in phases):12.2f}")
    busy = {rank: sum(row.get(p, 0.0) for p in phases if p not in ("data_wait", "allreduce"))
            for rank, row in table.items()}
    slow = max(busy, key=lambda r: busy[r])
    row = table[slow]
    phase = max((p for p in phases if p != "allreduce"), key=lambda p: row.get(p, 0.0),
                default="none")
    lines.append(f"slowest rank: {slow} ({busy[slow]:.2f} ms of work per step, excluding "
                 f"waits in allreduce and for data); its slowest phase: {phase} "
                 f"({row.get(phase, 0.0):.2f} ms per step)")
    return lines


def main(args: argparse.Namespace) -> int:
    run_dir = Path(args.run_dir)
    try:
        traces = load_ranks(run_dir)
    except TraceError as exc:
        console.err(f"distnn trace: {exc}")
        return ExitCode.BAD_INPUT
    out = Path(args.out) if args.out else run_dir / "trace.json"
    tmp = out.with_name(f".{out.name}.tmp")
    try:
        tmp.write_text(json.dumps(merge(traces)))
        os.replace(tmp, out)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        console.err(f"distnn trace: --out {out}: {exc.strerror or exc}; expected a writable "
                    f"file path")
        return ExitCode.BAD_INPUT
    for line in report(traces):
        print(line)
    print(f"merged {len(traces)} rank(s) into {out} (open in https://ui.perfetto.dev or "
          f"chrome://tracing)")
    return ExitCode.OK
