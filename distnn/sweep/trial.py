"""One trial: its run directories, the `distnn train` processes that fill them, and its record.

A trial is one `distnn train` run (one per fold with cross-validation) in a child process, or
`mpiexec -n W distnn train` with workers_per_trial W > 1, started with `--resume auto`, so an
interrupted trial continues from its checkpoint. The runner follows the run's metrics.jsonl and
hands every epoch-end validation value to a judge (ASHA, or Ray Tune's report), which may stop
the run: SIGTERM, so the run writes its checkpoint and exits 75. The child gets SIGTERM too when
the thread that started it dies (prctl PR_SET_PDEATHSIG): a killed driver or a Tune actor
stopped by its scheduler leaves no training process behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from distnn.config import save_config
from distnn.exit_codes import ExitCode
from distnn.sweep.orphan import PARENT_ENV
from distnn.sweep.records import (
    FINAL,
    LOWER_IS_BETTER,
    STOP_FILE,
    append_record,
    epoch_ends,
    read_trials,
)
from distnn.sweep.spec import SweepSpec, trial_config

POLL_S = 0.2
BAD_INPUT = "bad input (exit 2): "  # a failed trial's reason: its config or data was refused
Judge = Callable[[int, float], bool]  # (epochs done, metric) -> go on?


@dataclass(frozen=True)
class TrialPlan:
    trial: str
    stage: int
    index: int
    params: dict


def trial_id(stage: int, index: int) -> str:
    return f"s{stage}-t{index:03d}"


def members(spec: SweepSpec, trial: str) -> list[str]:
    """The trial's run directories, relative to the sweep directory."""
    if spec.folds:
        return [f"{trial}/fold-{i}" for i in range(spec.folds)]
    return [trial]


def epoch_values(metrics: Path, metric: str) -> list[float]:
    """The metric at every epoch end of a run, epoch by epoch (records.epoch_ends)."""
    ends = epoch_ends(metrics, metric)
    return [ends[e] for e in sorted(ends)]


def best(values: list[float], metric: str) -> float | None:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return None
    return min(finite) if LOWER_IS_BETTER[metric] else max(finite)


def summarize(sweep_dir: Path, spec: SweepSpec, plan: TrialPlan, status: str, reason: str,
              wall_s: float, cut: int | None = None) -> dict:
    """The trial's record from what its run directories hold; `cut`: the epochs a trial
    stopped by ASHA is credited with (its run may have gone on a little before it stopped)."""
    dirs = members(spec, plan.trial)
    per = [epoch_values(Path(sweep_dir) / d / "metrics.jsonl", spec.metric)[:cut] for d in dirs]
    bests = [best(v, spec.metric) for v in per]
    metric: float | None
    spread = None
    if spec.folds:
        done = all(b is not None for b in bests) and status == "finished"
        metric = sum(bests) / len(bests) if done else None  # type: ignore[arg-type]
        if done:
            mean = metric or 0.0
            spread = math.sqrt(sum((b - mean) ** 2 for b in bests) / len(bests))  # type: ignore
    else:
        metric = bests[0]
    return {"trial": plan.trial, "stage": plan.stage, "index": plan.index,
            "params": plan.params, "status": status, "metric": metric, "metric_std": spread,
            "fold_metrics": bests if spec.folds else None,
            "epochs": max((len(v) for v in per), default=0), "wall_s": round(wall_s, 3),
            "reason": reason, "members": dirs}


def mpiexec() -> str:
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else (shutil.which("mpiexec") or "mpiexec")


def wait_unlocked(run_dir: Path, timeout: float = 120.0) -> None:
    """Until no process holds the run directory's lock (a stopped run writing its checkpoint)."""
    path = Path(run_dir) / "distnn.lock"
    deadline = time.monotonic() + timeout
    while path.exists() and time.monotonic() < deadline:
        try:
            with open(path, "rb+") as fh:
                fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.lockf(fh, fcntl.LOCK_UN)
                return
        except OSError:
            time.sleep(POLL_S)


class TrialRunner:
    """Runs one trial to its end (or until `stop` is set) and appends its record."""

    def __init__(self, sweep_dir: Path, spec: SweepSpec, plan: TrialPlan, threads: int,
                 judge: Judge | None = None, stop: threading.Event | None = None):
        self.sweep_dir, self.spec, self.plan = Path(sweep_dir), spec, plan
        self.threads, self.judge = threads, judge
        self.stop = stop or threading.Event()

    def stopping(self) -> bool:
        """A stop request: this process's (the event) or the sweep's (its stop file, written by
        a driver whose trials run in other processes: Ray Tune's actors)."""
        return self.stop.is_set() or (self.sweep_dir / STOP_FILE).exists()

    def run(self) -> dict:
        earlier = read_trials(self.sweep_dir).get(self.plan.trial, {})
        if earlier.get("status") in FINAL:
            return earlier
        spent = float(earlier.get("wall_s") or 0.0)
        if self.stopping():  # the sweep is ending: not started, nothing written
            return summarize(self.sweep_dir, self.spec, self.plan, "interrupted",
                             "not started before the sweep was stopped", spent)
        start = time.monotonic()
        append_record(self.sweep_dir, {**summarize(self.sweep_dir, self.spec, self.plan,
                                                   "running", "", spent),
                                       "started_at": time.time()})
        status, reason = "finished", "all epochs (or early stopping)"
        cut = None
        try:
            for fold, member in enumerate(members(self.spec, self.plan.trial)):
                status, reason, cut = self._run_member(member, fold if self.spec.folds else None)
                if status != "finished":
                    break
        except Exception as exc:  # noqa: BLE001 - the trial's failure is recorded, not raised
            status, reason = "failed", f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        record = summarize(self.sweep_dir, self.spec, self.plan, status, reason,
                           spent + time.monotonic() - start, cut)
        append_record(self.sweep_dir, record)
        return record

    def _command(self, member: str, fold: int | None) -> list[str]:
        cfg = trial_config(self.spec, self.plan.params, self.plan.stage, fold, self.threads,
                           "mpi" if self.spec.workers_per_trial > 1 else "local")
        folder = self.sweep_dir / "configs"
        folder.mkdir(exist_ok=True)
        path = folder / f"{member.replace('/', '.')}.yaml"
        save_config(cfg, path)
        cmd = [sys.executable, "-m", "distnn.cli", "train", str(path),
               "--run-dir", str(self.sweep_dir / member), "--resume", "auto"]
        if self.spec.workers_per_trial > 1:
            cmd = [mpiexec(), "-n", str(self.spec.workers_per_trial), *cmd]
        return cmd

    def _run_member(self, member: str, fold: int | None) -> tuple[str, str, int | None]:
        """(status, reason, epochs credited when stopped by the judge, else None)."""
        run_dir = self.sweep_dir / member
        if _has_test_line(run_dir / "metrics.jsonl"):
            return "finished", "all epochs (or early stopping)", None  # done before a resume
        wait_unlocked(run_dir)  # a run of an earlier, killed sweep may still be stopping
        logs = self.sweep_dir / "logs"
        logs.mkdir(exist_ok=True)
        log = logs / f"{member.replace('/', '.')}.log"
        judged = len(epoch_values(run_dir / "metrics.jsonl", self.spec.metric))
        stopped_at = 0  # the epoch at whose end the judge stopped the run
        env = {**os.environ, PARENT_ENV: str(os.getpid())}
        with open(log, "ab") as out:
            child = subprocess.Popen(self._command(member, fold), stdout=out,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True, env=env)
            while not stopped_at:
                ended = child.poll() is not None
                if not ended and (self.stop.wait(POLL_S) or self.stopping()):
                    _terminate(child)
                    break
                values = epoch_values(run_dir / "metrics.jsonl", self.spec.metric)
                for n in range(judged + 1, len(values) + 1):
                    judged = n
                    if self.judge is not None and not self.judge(n, values[n - 1]) \
                            and not ended:  # an ended run's epochs are only recorded
                        stopped_at = n
                        _terminate(child)
                        break
                if ended:
                    break
            code = child.wait()
        if stopped_at:
            return ("stopped_asha", f"ASHA: below the cutoff of the rung at epoch {stopped_at}",
                    stopped_at)
        if self.stopping():
            return "interrupted", "the sweep was stopped; --resume continues it", None
        if code == ExitCode.OK:
            return "finished", "all epochs (or early stopping)", None
        if code == ExitCode.DIVERGED:
            return "diverged", _last_line(log) or "the loss diverged", None
        if code == ExitCode.RESUMABLE:
            return "interrupted", "the run was stopped (SIGTERM); --resume continues it", None
        if code == ExitCode.BAD_INPUT:
            return "failed", f"{BAD_INPUT}{_last_line(log)}", None
        return "failed", f"exit {code}: {_last_line(log)}", None


def _terminate(child: subprocess.Popen) -> None:
    """SIGTERM to the child's process group (every MPI rank): each writes its checkpoint."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(child.pid, signal.SIGTERM)


def _has_test_line(metrics: Path) -> bool:
    if not metrics.exists():
        return False
    return any('"split": "test"' in line for line in metrics.read_text().splitlines())


def _last_line(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:300] if lines else ""
