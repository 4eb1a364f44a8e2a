"""`distnn train CONFIG --backend ray --workers N [--address ADDR] [--max-failures K]`.

The driver (this process) connects to a Ray cluster (`--address`, else `RAY_ADDRESS`, else it
starts a local one), reserves N one-CPU bundles in a placement group (PACK), starts N worker
actors in it (ray_worker.py) and a rendezvous actor (num_cpus=0) for their collectives, and has
every worker run the same `run_worker` as every other backend, on a `RayCommunicator`. Once
the actors have built their communicators (`comm.transport`; one barrier decides it), it logs
the group's nodes and the transport they chose: "3 workers on 2 nodes (node ids ..),
transport object_store".

Failures: when a worker actor dies (its process killed, its node lost), the driver notices
(`RayActorError` from that worker's task), kills the rest of the group, logs what happened and,
while fewer than `--max-failures` restarts have been used, starts a new group that resumes from
`<run_dir>/checkpoints/last.h5` (`--resume auto` semantics). An exception or `comm.abort` on a
rank ends the job without a restart (the same error would come back), like under MPI.

Signals: SIGTERM/SIGUSR1 to the driver are forwarded (as SIGUSR1) to rank 0's process; the loop
then checkpoints at the next step on all ranks and the job exits 75, as with every backend.

Imported only when the Ray backend is chosen (it imports ray).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
from pathlib import Path
from typing import Any

import ray
from ray.util.placement_group import PlacementGroup, remove_placement_group
from ray.util.scheduling_strategies import (
    NodeAffinitySchedulingStrategy,
    PlacementGroupSchedulingStrategy,
)

from distnn.comm.ray_cluster import BadInput, connect, log
from distnn.comm.rendezvous import create_group, release_segments
from distnn.config import Config, ConfigError
from distnn.exit_codes import ExitCode
from distnn.launch.lock import RunDirLock
from distnn.launch.ray_elastic import (
    READY_TIMEOUT,
    WorkerRange,
    free_cpus,
    reserve,
    start_size,
    wait_for_cpus,
    worker_range,
)
from distnn.launch.ray_report import check_transport, death_reason, placement, resume_point
from distnn.launch.ray_worker import Worker
from distnn.launch.rundir import choose_run_dir
from distnn.launch.worker import Outcome, report
from distnn.storage import is_url
from distnn.storage.lock import RemoteLock


def launch(args: argparse.Namespace, cfg: Config) -> int:
    """Run `cfg` on `args.workers` Ray actors; returns the exit code of `distnn train`."""
    max_failures = cfg.comm.max_failures if args.max_failures is None else args.max_failures
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    try:
        workers = worker_range(args.workers, cfg)
        if max_failures < 0:
            raise BadInput(f"--max-failures must be >= 0, got {max_failures}")
        if not address and workers.low > (os.cpu_count() or 1):
            raise BadInput(f"--workers {workers.low} needs {workers.low} CPUs (one per worker), "
                           f"but this machine has {os.cpu_count()} (for a cluster, pass "
                           f"--address or set RAY_ADDRESS)")
        # Decided once, absolute, so that restarted groups write to the same place; locked
        # here, for the whole job, since worker groups come and go. A URL (s3://) is the same
        # on every node: each group's rank 0 stages it (storage/mirror.py).
        run_dir: Path | str = args.run_dir if is_url(args.run_dir) else \
            choose_run_dir(args.run_dir, args.resume, cfg.name).resolve()
        try:
            held: RunDirLock | RemoteLock = RemoteLock.claim(run_dir) \
                if isinstance(run_dir, str) else RunDirLock.claim(run_dir)
        except ConfigError as exc:
            raise BadInput(str(exc)) from None
        try:
            connect(address)
            return _launch(args, cfg, workers, max_failures, address, run_dir)
        finally:
            ray.shutdown()
            held.release()
    except BadInput as exc:
        log(f"error: {exc}")
        return ExitCode.BAD_INPUT


def _launch(args: argparse.Namespace, cfg: Config, workers: WorkerRange, max_failures: int,
            address: str | None, run_dir: Path | str) -> int:
    where = f"the Ray cluster at {address}" if address else "the local Ray"
    size = workers.high
    if workers.elastic:
        size = start_size(workers.low, workers.high, READY_TIMEOUT)
        if not size:
            raise BadInput(f"fewer than MIN {workers.low} CPUs free on {where} within "
                           f"{READY_TIMEOUT:g} s")
        log(f"elastic: starting on {size} workers ({workers.low} to {workers.high})")
    pg = reserve(size, where)
    resume, failures = args.resume, 0
    try:
        with _Signals() as signals:
            while True:
                group = _Group(pg, size, signals, grow_to=workers.high)
                ended = group.run(cfg, run_dir, resume)
                resume = "auto"
                if isinstance(ended, Outcome) and group.growing and not group.stop_asked \
                        and ended.exit_code == ExitCode.RESUMABLE:
                    remove_placement_group(pg)
                    size, pg = _regrow(size, min(workers.high, size + group.growing), where,
                                       cfg.comm.replace_timeout)
                    log(f"elastic: restarting on {size} workers, resuming from "
                        f"{resume_point(run_dir)}")
                    continue
                if isinstance(ended, Outcome):
                    report(ended)
                    return ended.exit_code
                if failures >= max_failures:
                    log(f"{ended}; no restart left (--max-failures {max_failures}): giving up")
                    return ExitCode.FAILED
                failures += 1
                shrink = ""
                if workers.elastic:
                    remove_placement_group(pg)
                    left = wait_for_cpus(size, workers.low, cfg.comm.replace_timeout)
                    if not left:
                        log(f"{ended}; fewer than MIN {workers.low} CPUs free after "
                            f"comm.replace_timeout {cfg.comm.replace_timeout:g} s: giving up")
                        return ExitCode.FAILED
                    if left < size:
                        shrink = (f" (elastic: no CPU for a replacement within "
                                  f"comm.replace_timeout {cfg.comm.replace_timeout:g} s)")
                    size = left
                    try:
                        pg = reserve(size, where, cfg.comm.replace_timeout or READY_TIMEOUT)
                    except BadInput as exc:  # the CPUs went again in between
                        log(f"{ended}; {exc}: giving up")
                        return ExitCode.FAILED
                log(f"{ended}; restarting the worker group ({failures} of --max-failures "
                    f"{max_failures}) on {size} workers{shrink}, resuming from "
                    f"{resume_point(run_dir)}")
    finally:
        remove_placement_group(pg)


def _regrow(size: int, grown: int, where: str, timeout: float) -> tuple[int, PlacementGroup]:
    """A placement group for `grown` workers, else (the free CPUs were taken in between) for the
    `size` the group had."""
    try:
        return grown, reserve(grown, where, timeout or READY_TIMEOUT)
    except BadInput as exc:
        log(f"elastic: {exc}; staying at {size} workers")
        return size, reserve(size, where)


class _Signals:
    """SIGTERM/SIGUSR1 on the driver: remembered, forwarded to rank 0 by the wait loop."""

    def __init__(self) -> None:
        self.pending = False
        self._old: dict = {}

    def __enter__(self) -> _Signals:
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            # Outside the main thread (launch called from a thread) there is no forwarding.
            with contextlib.suppress(ValueError):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.pending = True

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


@ray.remote(num_cpus=0)
def _send_sigusr1(pid: int) -> None:
    os.kill(pid, signal.SIGUSR1)


class _Group:
    """One worker group: N actors in the placement group and their rendezvous."""

    def __init__(self, pg: PlacementGroup, workers: int, signals: _Signals, grow_to: int):
        self.workers, self.signals, self.grow_to = workers, signals, grow_to
        self.growing = 0  # free CPUs seen when it was asked to stop to restart larger
        self.stop_asked = False  # a signal to the driver: the job stops (no growing then)
        self.rendezvous, _ = create_group(workers)
        actor_cls = ray.remote(num_cpus=1, max_restarts=0)(Worker)
        # Actor handles: Ray's stubs do not know the remote methods of a wrapped class.
        self.actors: list[Any] = [
            actor_cls.options(scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=r)).remote()
            for r in range(workers)]
        self.infos: list[dict] = []

    def run(self, cfg: Config, run_dir: Path | str, resume: str | None) -> Outcome | str:
        """Start the group and wait for it. Returns rank 0's Outcome when the job ends
        (finished, stopped, bad input, or aborted by a rank), or what died when a restart may
        help."""
        try:
            ray.get(self.rendezvous.set_workers.remote(self.actors), timeout=READY_TIMEOUT)
            self.infos = ray.get([a.info.remote() for a in self.actors], timeout=READY_TIMEOUT)
            for r, info in enumerate(self.infos):
                log(f"rank {r} of {self.workers} is pid {info['pid']} on {info['host']}")
            check_transport(cfg, self.infos)
            transports = self._wait([a.connect.remote(r, self.workers, self.rendezvous, cfg)
                                     for r, a in enumerate(self.actors)])
            if not isinstance(transports, list):
                return transports
            log(placement(self.infos, transports))
            ended = self._wait([a.run.remote(cfg, str(run_dir), resume, os.getcwd())
                                for a in self.actors])
            return ended[0] if isinstance(ended, list) else ended
        except ray.exceptions.GetTimeoutError:
            raise BadInput(f"the {self.workers} worker actors did not start within "
                           f"{READY_TIMEOUT:g} s") from None
        finally:
            self._stop()

    def _wait(self, refs: list) -> list | Outcome | str:
        """Every rank's result, in rank order, once all tasks are done; or, as soon as a rank
        fails, the Outcome that ends the job or what died (see `run`). Meanwhile, forwards the
        driver's signals and watches for CPUs to grow onto."""
        rank_of = {ref: r for r, ref in enumerate(refs)}
        pending, results = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if self.signals.pending:
                self.signals.pending = False
                self.stop_asked = True
                self._forward_signal("signal received")
            elif self.workers < self.grow_to and not self.growing and not self.stop_asked:
                self.growing = free_cpus()
                if self.growing:
                    self._forward_signal(f"elastic: {self.growing} CPU(s) free, growing")
            for ref in ready:
                r = rank_of[ref]
                try:
                    results[r] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    return self._died(r, exc)
                except ray.exceptions.RayTaskError as exc:
                    log(f"rank {r} failed: {exc}")
                    return Outcome(ExitCode.FAILED, None, None)
        return [results[r] for r in range(len(refs))]

    def _forward_signal(self, why: str) -> None:
        """SIGUSR1 to rank 0's process, from a zero-CPU task on its node."""
        info = self.infos[0]
        log(f"{why}: asking rank 0 (pid {info['pid']}) to checkpoint and stop")
        node = info.get("node_id")
        strategy = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
        _send_sigusr1.options(scheduling_strategy=strategy).remote(info["pid"])

    def _died(self, rank: int, exc: Exception) -> Outcome | str:
        try:
            aborted = ray.get(self.rendezvous.abort_info.remote(), timeout=10)
        except Exception:  # rendezvous gone too: treat as a death
            aborted = None
        if aborted is not None:
            a_rank, message, code = aborted
            log(f"rank {a_rank} aborted the job (exit {code}): {message}")
            return Outcome(code, None, None)
        info = self.infos[rank]
        return (f"worker rank {rank} (pid {info['pid']} on {info['host']}) "
                f"died{death_reason(exc)}")

    def _stop(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        try:  # killed workers leave their shared memory behind
            release_segments(self.rendezvous,
                             [i["node_id"] for i in self.infos] if self.infos else None)
        except Exception as exc:  # best effort: report, do not mask the outcome
            log(f"warning: could not remove the group's shared memory: {exc}")
        ray.kill(self.rendezvous, no_restart=True)
