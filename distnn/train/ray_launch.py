"""`distnn train CONFIG --backend ray --workers N [--address ADDR] [--max-failures K]`.

The driver (this process) connects to a Ray cluster (`--address`, else `RAY_ADDRESS`, else it
starts a local one), reserves N one-CPU bundles in a placement group (PACK), starts N worker
actors in it and a rendezvous actor (num_cpus=0) for their collectives, and has every worker run
the same SPMD `train(cfg, comm, run_dir, resume)` with a `RayCommunicator`.

Failures: when a worker actor dies (its process killed, its node lost), the driver notices
(`RayActorError` from that worker's task), kills the rest of the group, logs what happened and,
while fewer than `--max-failures` restarts have been used, starts a new group that resumes from
`<run_dir>/checkpoints/last.h5` (`--resume auto` semantics). An exception or `comm.abort` on a
rank ends the job without a restart (the same error would come back), like under MPI.

Signals: SIGTERM/SIGUSR1 to the driver are forwarded (as SIGUSR1) to rank 0's process; the loop
then checkpoints at the next step on all ranks and the job exits 75, as with every backend.

Importing this module does not import ray (only `launch` does).
"""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace

EXIT_BAD_INPUT = 2
EXIT_FAILED = 1
READY_TIMEOUT = 120.0  # seconds to wait for the placement group and the actors to start


def add_ray_arguments(p) -> None:
    """The `distnn train` options of the Ray backend."""
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="--backend ray: number of worker actors (one CPU each; default: the "
                        "config's comm.workers, 2)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--backend ray: Ray cluster address (default: $RAY_ADDRESS, else start a "
                        "local Ray)")
    p.add_argument("--max-failures", type=int, default=None, metavar="K",
                   help="--backend ray: restart the worker group from the last checkpoint at "
                        "most K times when a worker dies (default: the config's "
                        "comm.max_failures, 0)")


def log(message: str) -> None:
    sys.stderr.write(f"distnn[ray]: {message}\n")
    sys.stderr.flush()


class BadInput(Exception):
    """A problem with the user's request: one line, exit code 2."""


class _Worker:
    """One rank. Methods run in the actor process's main thread (the loop's signal handlers
    need it): `info` before `run`."""

    def info(self) -> dict:
        import ray

        return {"pid": os.getpid(), "host": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def run(self, rank, size, rendezvous, cfg, run_dir, resume, cwd) -> dict:
        from distnn.comm import install_excepthook
        from distnn.comm.failfast import report_and_abort
        from distnn.comm.ray import RayCommunicator
        from distnn.config import ConfigError
        from distnn.data.errors import DataError
        from distnn.train.commands import resolve_run
        from distnn.train.errors import CheckpointError, TrainingDiverged
        from distnn.train.loop import EXIT_DIVERGED
        from distnn.train.run import train

        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the config mean what they mean for the driver
        if cfg.train.threads == 0:
            # Each actor owns one CPU: one thread (os.cpu_count() sees the whole node).
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=1))
        comm = RayCommunicator(rank, size, rendezvous, timeout=cfg.comm.timeout or None)
        install_excepthook(comm)  # a dying helper thread (prefetch) ends the group
        try:
            rd, res = resolve_run(SimpleNamespace(run_dir=run_dir, resume=resume), cfg, comm)
            result = train(cfg, comm, rd, res)
        except (ConfigError, CheckpointError, DataError) as exc:
            print(f"distnn train [rank {rank}]: {exc}", file=sys.stderr, flush=True)
            return {"exit_code": EXIT_BAD_INPUT, "run_dir": run_dir, "test": None}
        except TrainingDiverged as exc:
            if rank == 0:
                print(f"distnn train: diverged: {exc}", file=sys.stderr, flush=True)
            return {"exit_code": EXIT_DIVERGED, "run_dir": run_dir, "test": None}
        except Exception:  # noqa: BLE001 - any other error ends every rank, as under MPI
            report_and_abort(comm, *sys.exc_info())
        finally:
            comm.close()
        return {"exit_code": int(result.exit_code), "run_dir": str(result.run_dir),
                "test": result.test}


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail fast (BadInput) when a host:port Ray address does not accept TCP connections;
    ray.init would otherwise retry for a long time."""
    if address in ("auto", "local") or address.startswith(("ray://", "anyscale://")):
        target = address[len("ray://"):] if address.startswith("ray://") else None
        if not target:
            return
    else:
        target = address.split("://", 1)[-1]
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise BadInput(f"Ray address {address!r} is not HOST:PORT (e.g. 10.0.0.1:6379)")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise BadInput(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc} "
                       f"(is `ray start --head` running there?)") from None


def connect(address: str | None):
    """ray.init on `address`, or a new local Ray; returns True if this process started it."""
    import ray

    if address:
        check_reachable(address)
        try:
            ray.init(address=address, logging_level="WARNING")
        except Exception as exc:  # noqa: BLE001 - ConnectionError, RuntimeError, ...
            raise BadInput(f"cannot connect to the Ray cluster at {address}: {exc}") from None
        return False
    ray.init(include_dashboard=False, logging_level="WARNING")
    return True


def decide_run_dir(args, cfg) -> Path:
    """The run directory, absolute, decided once by the driver so restarts reuse it."""
    from distnn.train.commands import latest_run_dir

    run_dir = Path(args.run_dir) if args.run_dir else None
    if run_dir is None and args.resume == "auto":
        run_dir = latest_run_dir(cfg.name)
    if run_dir is None:
        run_dir = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    return run_dir.resolve()


class _Signals:
    """SIGTERM/SIGUSR1 on the driver: remembered, forwarded to rank 0 by the wait loop."""

    def __init__(self):
        self.pending = False
        self._old = {}

    def __enter__(self):
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (launch called from a thread): no forwarding
                pass
        return self

    def _handle(self, signum, frame):
        self.pending = True

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _forward_signal(info: dict) -> None:
    """SIGUSR1 to a worker process, from a zero-CPU task on that worker's node."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    @ray.remote(num_cpus=0)
    def kill(pid):
        os.kill(pid, signal.SIGUSR1)

    node = info.get("node_id")
    strategy = NodeAffinitySchedulingStrategy(node, soft=True) if node else "DEFAULT"
    kill.options(scheduling_strategy=strategy).remote(info["pid"])


def launch(args, cfg) -> int:
    """Run `cfg` on `args.workers` Ray actors; returns the exit code of `distnn train`."""
    workers = cfg.comm.workers if args.workers is None else args.workers
    if workers < 1:
        log(f"error: --workers must be >= 1, got {workers}")
        return EXIT_BAD_INPUT
    max_failures = getattr(args, "max_failures", None)
    max_failures = cfg.comm.max_failures if max_failures is None else max_failures
    if max_failures < 0:
        log(f"error: --max-failures must be >= 0, got {max_failures}")
        return EXIT_BAD_INPUT
    try:
        import ray  # noqa: F401
    except ImportError:
        log("error: the 'ray' backend needs ray, which is not installed: "
            "pip install 'distnn[ray]'")
        return EXIT_BAD_INPUT
    address = args.address or os.environ.get("RAY_ADDRESS") or None
    if not address and workers > (os.cpu_count() or 1):
        log(f"error: --workers {workers} needs {workers} CPUs (one per worker), but this "
            f"machine has {os.cpu_count()} (for a cluster, pass --address or set RAY_ADDRESS)")
        return EXIT_BAD_INPUT
    try:
        started = connect(address)
    except BadInput as exc:
        log(f"error: {exc}")
        return EXIT_BAD_INPUT
    try:
        return _launch(args, cfg, workers, max_failures, address)
    except BadInput as exc:
        log(f"error: {exc}")
        return EXIT_BAD_INPUT
    finally:
        import ray

        ray.shutdown()
        del started


def _launch(args, cfg, workers: int, max_failures: int, address) -> int:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    from distnn.comm.ray import create_group
    from distnn.train.commands import _report

    cpus = ray.cluster_resources().get("CPU", 0)
    where = f"the Ray cluster at {address}" if address else "the local Ray"
    if workers > cpus:
        raise BadInput(f"--workers {workers} needs {workers} CPUs (one per worker), but {where} "
                       f"has {cpus:g}")
    run_dir = decide_run_dir(args, cfg)
    pg = placement_group([{"CPU": 1}] * workers, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=READY_TIMEOUT)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise BadInput(f"could not reserve {workers} CPUs on {where} within {READY_TIMEOUT:g} s "
                       f"(other jobs hold them? `ray status` shows the usage)") from None
    actor_cls = ray.remote(num_cpus=1, max_restarts=0)(_Worker)
    resume = args.resume
    failures = 0
    try:
        with _Signals() as signals:
            while True:
                outcome = _run_group(actor_cls, pg, workers, cfg, run_dir, resume, signals,
                                     PlacementGroupSchedulingStrategy, create_group)
                kind = outcome[0]
                if kind == "done":
                    result = outcome[1]
                    if result["exit_code"] in (0, 75):
                        _report(SimpleNamespace(exit_code=result["exit_code"],
                                                run_dir=Path(result["run_dir"]),
                                                test=result["test"]))
                    return result["exit_code"]
                if kind == "aborted":
                    return outcome[1]
                # kind == "died"
                what = outcome[1]
                if failures >= max_failures:
                    log(f"{what}; no restart left (--max-failures {max_failures}): giving up")
                    return EXIT_FAILED
                failures += 1
                last = run_dir / "checkpoints" / "last.h5"
                log(f"{what}; restarting the worker group ({failures} of --max-failures "
                    f"{max_failures}), resuming from "
                    f"{last if last.exists() else 'the start (no checkpoint yet)'}")
                resume = "auto"
    finally:
        remove_placement_group(pg)


def _run_group(actor_cls, pg, workers, cfg, run_dir, resume, signals, pg_strategy,
               create_group):
    """Start one worker group and wait for it. Returns ("done", rank 0's result),
    ("aborted", code) or ("died", description)."""
    import ray

    from distnn.comm.ray import release_segments

    rendezvous, _ = create_group(workers)
    infos = None
    actors = [actor_cls.options(scheduling_strategy=pg_strategy(
        placement_group=pg, placement_group_bundle_index=r)).remote() for r in range(workers)]
    try:
        ray.get(rendezvous.set_workers.remote(actors), timeout=READY_TIMEOUT)
        infos = ray.get([a.info.remote() for a in actors], timeout=READY_TIMEOUT)
        for r, info in enumerate(infos):
            log(f"rank {r} of {workers} is pid {info['pid']} on {info['host']}")
        cwd = os.getcwd()
        refs = [a.run.remote(r, workers, rendezvous, cfg, str(run_dir), resume, cwd)
                for r, a in enumerate(actors)]
        rank_of = {ref: r for r, ref in enumerate(refs)}
        pending, results = list(refs), {}
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            if signals.pending:
                signals.pending = False
                log(f"signal received: asking rank 0 (pid {infos[0]['pid']}) to checkpoint and "
                    f"stop")
                _forward_signal(infos[0])
            for ref in ready:
                r = rank_of[ref]
                try:
                    results[r] = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    aborted = _abort_info(rendezvous)
                    if aborted is not None:
                        a_rank, message, code = aborted
                        log(f"rank {a_rank} aborted the job (exit {code}): {message}")
                        return ("aborted", code)
                    reason = _death_reason(exc)
                    return ("died", f"worker rank {r} (pid {infos[r]['pid']} on "
                                    f"{infos[r]['host']}) died{reason}")
                except ray.exceptions.RayTaskError as exc:
                    log(f"rank {r} failed: {exc}")
                    return ("aborted", EXIT_FAILED)
        return ("done", results[0])
    except ray.exceptions.GetTimeoutError:
        raise BadInput(f"the {workers} worker actors did not start within {READY_TIMEOUT:g} s")
    finally:
        for a in actors:
            ray.kill(a, no_restart=True)
        try:  # killed workers leave their shared memory behind
            release_segments(rendezvous, [i["node_id"] for i in infos] if infos else None)
        except Exception as exc:  # noqa: BLE001 - best effort: report, do not mask the outcome
            log(f"warning: could not remove the group's shared memory: {exc}")
        ray.kill(rendezvous, no_restart=True)


def _abort_info(rendezvous):
    import ray

    try:
        return ray.get(rendezvous.abort_info.remote(), timeout=10)
    except Exception:  # noqa: BLE001 - rendezvous gone too: treat as a death
        return None


def _death_reason(exc) -> str:
    """The first sentence of Ray's explanation, e.g. "The actor is dead because its worker
    process has died." plus its exit type, kept to one short line."""
    text = " ".join(str(exc).split())
    first = text.split(". ")[0].strip()
    kind = ""
    if "Worker exit type:" in text:
        kind = "; " + text[text.index("Worker exit type:"):].split(" Worker exit detail")[0]
    return f" ({first[:160]}{kind[:60]})" if first else ""
