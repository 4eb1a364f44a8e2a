"""A rank's timeline (`log.trace: true`): complete events ("ph": "X", wall-clock microseconds,
so ranks on several hosts line up as well as their clocks do) of the phases data_wait, forward,
backward, allreduce, update, validation and checkpoint, written to <run_dir>/trace/rank<R>.json in
the Chrome trace format. A rank keeps at most log.trace_mb of events: when a new one would pass the
cap, the oldest go first (the file says how many). `distnn trace` (watch/trace.py) merges them."""

from __future__ import annotations

import json
import os
import time
from collections import deque
from pathlib import Path
from types import TracebackType

PHASES = ("data_wait", "forward", "backward", "allreduce", "update", "validation", "checkpoint")
HEADER = 512  # bytes of a trace file besides its events (the cap leaves room for them)
FLUSH_SECONDS = 30.0  # a run in progress rewrites its trace file at most this often


class Span:
    """One phase being timed: recorded into the tracer when the `with` block ends."""

    __slots__ = ("tracer", "name", "start")

    def __init__(self, tracer: Tracer, name: str):
        self.tracer, self.name, self.start = tracer, name, 0

    def __enter__(self) -> Span:
        self.start = time.time_ns()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.tracer.add(self.name, self.start, time.time_ns())


class Tracer:
    """A rank's timeline: a model's `spans` (nn/model.py NoSpans) that records. `step` tags the
    events with the global step they belong to; `flush()` writes the file (atomically)."""

    def __init__(self, folder: Path, rank: int, cap_mb: float):
        self.path = Path(folder) / f"rank{rank}.json"
        self.rank, self.cap = rank, max(int(cap_mb * 1e6) - HEADER, 0)
        self.events: deque[str] = deque()
        self.size = self.dropped = self.step = 0
        self.flushed = time.monotonic()

    def span(self, name: str) -> Span:
        return Span(self, name)

    def add(self, name: str, start_ns: int, end_ns: int) -> None:
        """Record phase `name` from `start_ns` to `end_ns` (time.time_ns) of the current step."""
        event = (f'{{"name":"{name}","cat":"distnn","ph":"X","ts":{start_ns // 1000},'
                 f'"dur":{max(end_ns - start_ns, 0) // 1000},"pid":{self.rank},"tid":0,'
                 f'"args":{{"step":{self.step}}}}}')
        self.events.append(event)
        self.size += len(event) + 1
        while self.size > self.cap and self.events:
            self.size -= len(self.events.popleft()) + 1
            self.dropped += 1

    def due(self) -> bool:
        """Whether FLUSH_SECONDS have passed since the last flush (a run in progress)."""
        return time.monotonic() - self.flushed > FLUSH_SECONDS

    def flush(self) -> None:
        """Write <folder>/rank<R>.json: a temporary file renamed over the old one, so a reader
        never sees half a trace. An OSError is left to the caller."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        meta = (f'{{"name":"process_name","ph":"M","pid":{self.rank},"tid":0,'
                f'"args":{{"name":"rank {self.rank}"}}}}')
        other = json.dumps({"rank": self.rank, "dropped_events": self.dropped,
                            "cap_bytes": self.cap + HEADER})
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as fh:
            fh.write('{"displayTimeUnit":"ms","otherData":' + other + ',"traceEvents":[\n'
                     + meta)
            for event in self.events:
                fh.write(",\n" + event)
            fh.write("\n]}\n")
        os.replace(tmp, self.path)
        self.flushed = time.monotonic()
