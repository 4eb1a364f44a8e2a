"""`distnn sweep SWEEP.yaml`: a hyper-parameter search of many `distnn train` runs, and
`distnn sweep plot SWEEP_DIR`.

The sweep directory (default runs/<sweep file name>) holds sweep.yaml (the sweep as run),
trials.jsonl (sweep/records.py), stages.jsonl, configs/ and logs/ of every trial, and one run
directory per trial. Exit codes: 0 done, 2 bad input, 75 stopped by SIGTERM/SIGINT (every
running trial wrote its checkpoint: `--resume` continues).
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import socket
import threading
from pathlib import Path

import yaml

from distnn import console
from distnn.comm import INSTALL_HINTS
from distnn.exit_codes import ExitCode
from distnn.sweep.local import cores, run_local, run_trial, trial_line
from distnn.sweep.plan import stage_plans
from distnn.sweep.records import FINAL, STOP_FILE, ranked, read_trials
from distnn.sweep.spec import SweepError, SweepFailed, SweepSpec, load_spec, read_sweep_yaml


def register_sweep_command(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sweep", help="hyper-parameter search: random, coarse to fine, ASHA; "
                                     "`distnn sweep plot DIR` draws it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", metavar="SWEEP.yaml", help="the sweep file (or `plot` SWEEP_DIR)")
    p.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    p.add_argument("--backend", default="local", choices=("local", "ray"),
                   help="local: child processes here (default); ray: Ray Tune trials")
    p.add_argument("--parallel", type=int, default=None, metavar="K",
                   help="trials at once (default: local, cores // workers_per_trial; ray, as "
                        "many as the cluster has CPUs for)")
    p.add_argument("--run-dir", default=None, metavar="DIR",
                   help="the sweep directory (default: runs/<sweep file name>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the sweep in its directory: finished trials are kept, "
                        "interrupted ones resume from their checkpoints")
    p.add_argument("--folds", type=int, default=None, metavar="K",
                   help="cross-validation: each trial is K runs, its metric their mean")
    p.add_argument("--address", default=None, help="--backend ray: the cluster's address")
    p.add_argument("--trial", default=None, metavar="STAGE:INDEX",
                   help="run only this trial (what each task of slurm/sweep.sbatch runs); "
                        "when it ends its stage, prints `next stage: S trials: N`")
    p.add_argument("--top", type=int, default=5, help="plot: the best trials' curves drawn")
    p.add_argument("--out", default=None, help="plot: where the PNGs go (default DIR/plots)")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    if args.sweep == "plot":
        from distnn.sweep import plot

        if len(args.rest) != 1:
            console.err("distnn sweep plot: expected one SWEEP_DIR")
            return ExitCode.BAD_INPUT
        args.sweep_dir = args.rest[0]
        return plot.main(args)
    if args.rest:
        console.err(f"distnn sweep: unexpected argument(s) {' '.join(args.rest)}; expected "
                    f"one SWEEP.yaml (or `plot SWEEP_DIR`)")
        return ExitCode.BAD_INPUT
    if args.backend == "ray":
        try:  # ray.tune raises ImportError when a dependency of it (pandas) is missing
            import ray.tune  # noqa: F401
        except ImportError as exc:
            console.err(f"distnn sweep: --backend ray needs Ray Tune, which does not import "
                        f"here ({console.one_line(exc)}): {INSTALL_HINTS['ray']}")
            return ExitCode.BAD_INPUT
    try:
        spec = load_spec(args.sweep, args.folds)
        parallel = _parallel(args.parallel, spec, args.backend)
        sweep_dir = _prepare(spec, Path(args.run_dir or Path("runs") / Path(args.sweep).stem),
                             args.resume or args.trial is not None)
        lock = None if args.trial is not None else _lock(sweep_dir)
    except SweepError as exc:
        console.err(f"distnn sweep: {exc}")
        return ExitCode.BAD_INPUT
    if args.trial is not None:
        return _one_trial(spec, sweep_dir, args.trial)
    (sweep_dir / STOP_FILE).unlink(missing_ok=True)  # an earlier stop request is done
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set())
                for s in (signal.SIGTERM, signal.SIGINT)}
    at_once = f"{parallel} at a time" if parallel else "as many at a time as there are CPUs"
    print(f"sweep {sweep_dir}: {spec.trials} trial(s), {len(spec.stages)} stage(s), "
          f"{at_once}, {args.backend} backend", flush=True)
    try:
        if args.backend == "ray":
            from distnn.sweep.ray_tune import run_ray  # imports ray: only when chosen

            done = run_ray(spec, sweep_dir, parallel, stop, _say, args.address)
        else:
            done = run_local(spec, sweep_dir, parallel, stop, _say)
    except SweepError as exc:
        console.err(f"distnn sweep: {exc}")
        return ExitCode.FAILED if isinstance(exc, SweepFailed) else ExitCode.BAD_INPUT
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if lock is not None:
            lock.close()
    print(table(read_trials(sweep_dir), spec.metric), flush=True)
    if not done:
        console.err(f"distnn sweep: stopped; continue with: distnn sweep {args.sweep} "
                    f"--run-dir {sweep_dir} --resume")
        return ExitCode.RESUMABLE
    return ExitCode.OK


def _one_trial(spec: SweepSpec, sweep_dir: Path, which: str) -> int:
    """One trial of the sweep (a SLURM array task): ASHA through the shared rungs file."""
    try:
        stage, index = (int(v) for v in which.split(":"))
        if not (0 <= stage < len(spec.stages) and 0 <= index < spec.stages[stage].trials):
            raise ValueError
    except ValueError:
        console.err(f"distnn sweep: --trial {which!r}, expected STAGE:INDEX with a stage below "
                    f"{len(spec.stages)} and an index below that stage's trials")
        return ExitCode.BAD_INPUT
    records = read_trials(sweep_dir)
    if stage and any(records.get(p.trial, {}).get("status") not in FINAL
                     for p in stage_plans(spec, sweep_dir, stage - 1)):
        console.err(f"distnn sweep: --trial {which}: stage {stage - 1} has not ended (every "
                    f"trial of it must end before stage {stage} is drawn)")
        return ExitCode.BAD_INPUT
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM,
                                                                     signal.SIGINT)}
    try:
        plan = stage_plans(spec, sweep_dir, stage)[index]
        threads = max(1, int(os.environ.get("SLURM_CPUS_PER_TASK") or 1)
                      // spec.workers_per_trial)
        record = run_trial(spec, sweep_dir, plan, threads, stop)
    except SweepError as exc:
        console.err(f"distnn sweep: {exc}")
        return ExitCode.BAD_INPUT
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print(trial_line(record, spec.metric), flush=True)
    if record["status"] == "interrupted":
        return ExitCode.RESUMABLE
    nxt = stage + 1
    if nxt < len(spec.stages) and _stage_ended(spec, sweep_dir, stage) \
            and _claim(sweep_dir / f"submitted-s{nxt}"):
        print(f"next stage: {nxt} trials: {spec.stages[nxt].trials}", flush=True)
    return ExitCode.OK


def _stage_ended(spec: SweepSpec, sweep_dir: Path, stage: int) -> bool:
    records = read_trials(sweep_dir)
    return all(records.get(p.trial, {}).get("status") in FINAL
               for p in stage_plans(spec, sweep_dir, stage))


def _claim(marker: Path) -> bool:
    """True for the one process that creates `marker` (O_EXCL)."""
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def _say(line: str) -> None:
    print(line, flush=True)


def _parallel(asked: int | None, spec: SweepSpec, backend: str) -> int:
    """Trials at once: --parallel, else (local) cores // W, else (ray) 0: as many as the
    cluster has CPUs for (Tune places them)."""
    if asked is None:
        return 0 if backend == "ray" else max(1, cores() // spec.workers_per_trial)
    if asked < 1:
        raise SweepError(f"--parallel: {asked}, expected at least 1")
    return asked


def _prepare(spec: SweepSpec, sweep_dir: Path, resume: bool) -> Path:
    """Create the sweep directory and its sweep.yaml, or check it against the file on
    --resume (a changed sweep file would mix two searches)."""
    wanted = spec.to_dict()
    existing = sweep_dir / "sweep.yaml"
    if existing.exists():
        if not resume:
            raise SweepError(f"{sweep_dir} already holds a sweep; pass --resume to continue it, "
                             f"or choose another --run-dir")
        if read_sweep_yaml(sweep_dir) != wanted:
            raise SweepError(f"{existing} differs from the sweep file given (base, space, "
                             f"stages, seed, ...); expected the same sweep to --resume")
        return sweep_dir
    if resume and (sweep_dir / "trials.jsonl").exists():
        raise SweepError(f"{sweep_dir} has trials but no sweep.yaml; expected a sweep directory")
    tmp = existing.with_suffix(f".{os.getpid()}.tmp")
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(wanted, sort_keys=False))
        tmp.replace(existing)
    except OSError as exc:
        raise SweepError(f"--run-dir {sweep_dir}: cannot write the sweep there: "
                         f"{exc.strerror or exc}; expected a writable directory") from None
    return sweep_dir


def _lock(sweep_dir: Path):
    """One driver per sweep directory: an fcntl lock held until the driver exits."""
    fh = open(sweep_dir / "sweep.lock", "a+")  # noqa: SIM115 - held for the driver's life
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.seek(0)
        holder = fh.read().strip() or "another process"
        fh.close()
        raise SweepError(f"{sweep_dir}: another `distnn sweep` holds its lock (taken last by "
                         f"{holder}); expected one driver per sweep directory") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    fh.flush()
    return fh


def table(records: dict[str, dict], metric: str) -> str:
    """The trials ranked by the metric (best first), then those without one."""
    rows = ranked(records, metric)
    rest = [r for r in records.values() if r not in rows]
    lines = [f"{'rank':>4}  {'trial':<9} {metric:>12}  {'epochs':>6}  {'status':<12} "
             f"{'wall s':>7}  params"]
    for i, r in enumerate(rows + rest, 1):
        value = "-" if r.get("metric") is None else f"{r['metric']:.4f}"
        if r.get("metric_std") is not None:
            value += f"±{r['metric_std']:.4f}"
        params = "  ".join(f"{k}={_short(v)}" for k, v in r["params"].items())
        lines.append(f"{i if r in rows else '-':>4}  {r['trial']:<9} {value:>12}  "
                     f"{r['epochs']:>6}  {r['status']:<12} {r['wall_s']:>7.1f}  {params}")
    return "\n".join(lines)


def _short(value) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)

