"""How many Ray workers a job runs on: `--workers N` (fixed) or `--workers MIN:MAX` (elastic).

Elastic: the job starts on as many workers as there are free CPUs, up to MAX, once at least MIN
are free (waiting for them up to READY_TIMEOUT). When a worker dies and no CPU appears for a
replacement within `comm.replace_timeout` seconds, the group restarts on the CPUs that are left
(if at least MIN) from the last checkpoint; while it runs on fewer than MAX, the driver watches
for free CPUs and, when some appear, has the group checkpoint at its next step and restarts it
larger. The invariant step (train.invariant) makes each of these restarts change no bit of the
result, which is why an elastic range needs it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group

from distnn.comm.ray_cluster import BadInput
from distnn.config import Config

READY_TIMEOUT = 120.0  # seconds to wait for the placement group and the actors to start
POLL = 0.5  # seconds between looks at the cluster's free CPUs


@dataclass(frozen=True)
class WorkerRange:
    low: int
    high: int

    @property
    def elastic(self) -> bool:
        return self.low < self.high


def worker_range(given: str | None, cfg: Config) -> WorkerRange:
    """--workers N | MIN:MAX, else comm.workers_min:comm.workers (workers_min 0: fixed)."""
    if given is None:
        high = cfg.comm.workers
        low = cfg.comm.workers_min or high
        what = f"comm.workers_min {low} / comm.workers {high}"
    else:
        parts = str(given).split(":")
        try:
            if len(parts) > 2:
                raise ValueError
            low, high = int(parts[0]), int(parts[-1])
        except ValueError:
            raise BadInput(f"--workers {given!r}: expected N or MIN:MAX (integers)") from None
        what = f"--workers {given}"
    if low < 1:
        raise BadInput(f"{what}: MIN {low} < 1; expected at least one worker")
    if low > high:
        raise BadInput(f"{what}: MIN {low} > MAX {high}; expected MIN <= MAX")
    if high > cfg.train.groups and cfg.train.invariant:
        raise BadInput(f"{what}: {high} workers cannot share train.groups {cfg.train.groups} "
                       f"groups; expected MAX <= {cfg.train.groups} (or raise train.groups)")
    if low < high and not cfg.train.invariant:
        raise BadInput(f"{what}: an elastic range needs train.invariant: true (the plain step "
                       f"computes other numbers on another number of workers)")
    per_rank = [i for i, spec in enumerate(cfg.model)
                if spec.get("type") == "batchnorm" and spec.get("sync") is False]
    if low < high and per_rank:
        raise BadInput(f"{what}: an elastic range needs synced BatchNorm, but layer "
                       f"{per_rank[0]} has sync: false (per-worker statistics change with the "
                       f"number of workers)")
    return WorkerRange(low, high)


def free_cpus() -> int:
    return int(ray.available_resources().get("CPU", 0))


def reserve(count: int, where: str, timeout: float = READY_TIMEOUT) -> PlacementGroup:
    """A placement group of `count` one-CPU bundles (PACK); BadInput if it does not fit."""
    cpus = ray.cluster_resources().get("CPU", 0)
    if count > cpus:
        raise BadInput(f"--workers {count} needs {count} CPUs (one per worker), but {where} "
                       f"has {cpus:g}")
    pg = placement_group([{"CPU": 1}] * count, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise BadInput(f"could not reserve {count} CPUs on {where} within {timeout:g} s "
                       f"(other jobs hold them? `ray status` shows the usage)") from None
    return pg


def start_size(low: int, high: int, timeout: float) -> int:
    """Workers to start an elastic job on: as many as there are free CPUs, up to `high`, as
    soon as at least `low` are free (more CPUs later make the group grow); 0 if fewer than `low`
    are free within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        free = free_cpus()
        if free >= low:
            return min(high, free)
        if time.monotonic() >= deadline:
            return 0
        time.sleep(POLL)


def wait_for_cpus(want: int, low: int, timeout: float) -> int:
    """The most workers, up to `want`, that free CPUs allow within `timeout` seconds: `want`
    as soon as they are free, else what is free at the end (0 if fewer than `low`)."""
    deadline = time.monotonic() + timeout
    while True:
        free = free_cpus()
        if free >= want:
            return want
        if time.monotonic() >= deadline:
            return min(want, free) if free >= low else 0
        time.sleep(POLL)
