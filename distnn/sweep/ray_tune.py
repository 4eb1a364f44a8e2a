"""The Ray backend: each stage is one Ray Tune experiment (Tuner.fit), on a new local Ray or
the cluster at --address.

- The trials are the same as the local backend's: drawn by sweep/sample.py from the sweep's
  seed, handed to Tune as a grid over the stage's plans (Tune runs exactly those).
- A Tune trial reserves `workers_per_trial` CPUs and runs sweep/trial.py's TrialRunner: the
  `distnn train` child (mpiexec -n W for W > 1) in that actor, each epoch end reported with
  `tune.report({"epochs": n, <metric>: value})`.
- Early stopping is Tune's ASHAScheduler (time_attr "epochs"). When it stops a trial, Tune
  ends its actor; the child then gets SIGTERM (trial.py), checkpoints and exits, and this
  driver writes the trial's "stopped_asha" record.
- Resume: `Tuner.restore` of the stage's experiment in <sweep_dir>/tune/stage-<s>; a trial
  started again continues from its run directory's checkpoint (`--resume auto`).
- SIGTERM or SIGINT to the driver writes the sweep's stop file: every trial runner stops its
  `distnn train` child with SIGTERM (it checkpoints and exits 75) and its trainable raises, so
  Tune ends the trial as errored and `Tuner.restore(resume_errored=True)` starts it again,
  from the checkpoint. (Tune ending the actor itself would SIGKILL the child through Ray's
  subreaper before it could checkpoint.) The sweep exits 75.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # Tune's progress tables off (verbose=0)
os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # SIGINT stops the sweep our way (below)

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler  # noqa: E402

from distnn.comm.ray_cluster import BadInput, connect
from distnn.sweep.local import Print, stage_epochs, trial_line
from distnn.sweep.plan import describe_stage, stage_plans, stage_space
from distnn.sweep.records import FINAL, STOP_FILE, append_record, read_trials
from distnn.sweep.spec import SweepError, SweepSpec
from distnn.sweep.trial import TrialPlan, TrialRunner, members, summarize, wait_unlocked


def _trainable(config: dict, sweep_dir: str, spec: SweepSpec) -> None:
    """One Tune trial: run the plan's trial, reporting every epoch end to Tune."""
    plan = TrialPlan(**config["plan"])
    last = stage_epochs(spec, plan.stage)

    def judge(epochs: int, value: float) -> bool:
        if epochs < last:  # Tune stops a trial at max_t: the last epoch's end is not a rung
            tune.report({"epochs": epochs, spec.metric: value})
        return True

    record = TrialRunner(Path(sweep_dir), spec, plan, threads=1, judge=judge).run()
    if record["status"] == "interrupted":  # errored: Tuner.restore(resume_errored) reruns it
        raise RuntimeError(f"{plan.trial}: interrupted by the sweep's stop request")
    # Tune wants the metric in a trial's last result too (NaN: the trial has none).
    metric = record["metric"] if record["metric"] is not None else float("nan")
    tune.report({"epochs": record["epochs"], spec.metric: metric, "status": record["status"]})


class _Ended(tune.Callback):
    """Which trials Tune ended (completed, or stopped by its scheduler) and which raised; a
    trial in neither was cut off by a stop request (SIGTERM/SIGINT)."""

    def __init__(self) -> None:
        self.completed: set[str] = set()
        self.errors: dict[str, str] = {}
        self.ended_at: dict[str, float] = {}  # time.time() when Tune ended it
        self.epochs: dict[str, int] = {}  # the epochs of its last result

    def _note(self, trial) -> str:
        name = trial.config["plan"]["trial"]
        self.ended_at[name] = time.time()
        last = trial.last_result or {}
        if isinstance(last.get("epochs"), int):
            self.epochs[name] = last["epochs"]
        return name

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self.completed.add(self._note(trial))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.errors[self._note(trial)] = str(trial.error_file or "see its log")


def _scheduler(spec: SweepSpec, stage: int):
    es = spec.early_stop
    if es.halving != "asha":
        return FIFOScheduler()
    return ASHAScheduler(time_attr="epochs", metric=spec.metric, mode=spec.mode,
                         max_t=stage_epochs(spec, stage), grace_period=es.grace_epochs,
                         reduction_factor=es.reduction_factor)


def _tuner(spec: SweepSpec, sweep_dir: Path, stage: int, plans: list[TrialPlan],
           parallel: int, ended: _Ended) -> tune.Tuner:
    storage = str((sweep_dir / "tune").resolve())
    name = f"stage-{stage}"
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, sweep_dir=str(sweep_dir.resolve()), spec=spec),
        {"cpu": spec.workers_per_trial})
    path = os.path.join(storage, name)
    if tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable, resume_unfinished=True,
                                   resume_errored=True)
        # The restored RunConfig holds the pickled callback of the first fit: this one counts.
        tuner._local_tuner._run_config.callbacks = [ended]  # type: ignore[union-attr]
        return tuner
    return tune.Tuner(
        trainable,
        param_space={"plan": tune.grid_search([plan.__dict__ for plan in plans])},
        tune_config=tune.TuneConfig(scheduler=_scheduler(spec, stage),
                                    max_concurrent_trials=parallel or None,
                                    reuse_actors=False),
        run_config=tune.RunConfig(name=name, storage_path=storage, verbose=0,
                                  callbacks=[ended]))


def run_ray(spec: SweepSpec, sweep_dir: Path, parallel: int, stop: threading.Event,
            say: Print, address: str | None) -> bool:
    """Every stage in turn as a Tune experiment. False when a stop request ended it early."""
    try:
        connect(address or os.environ.get("RAY_ADDRESS"))
    except BadInput as exc:
        raise SweepError(str(exc)) from None
    stop_file = sweep_dir / STOP_FILE
    stop_file.unlink(missing_ok=True)  # a resumed sweep: the old request is done

    def on_signal(*_) -> None:
        stop.set()
        stop_file.touch()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        for stage in range(len(spec.stages)):
            plans = stage_plans(spec, sweep_dir, stage)
            say(describe_stage(spec, stage, stage_space(spec, sweep_dir, stage)[1]))
            ended = _Ended()
            _tuner(spec, sweep_dir, stage, plans, parallel, ended).fit()
            settled = [_settle(spec, sweep_dir, plan, ended, stop) for plan in plans]
            for record in settled:
                say(trial_line(record, spec.metric))
            if stop.is_set() or any(r["status"] == "interrupted" for r in settled):
                return False
    finally:
        ray.shutdown()
    return True


def _settle(spec: SweepSpec, sweep_dir: Path, plan: TrialPlan, ended: _Ended,
            stop: threading.Event) -> dict:
    """The trial's record after its Tune trial ended: written by the trial itself, or here when
    Tune stopped it (ASHA), it raised, or the sweep was stopped."""
    record = read_trials(sweep_dir).get(plan.trial)
    if record is not None and (record["status"] in FINAL or record["status"] == "interrupted"):
        return record
    for member in members(spec, plan.trial):  # its child may still be writing a checkpoint
        wait_unlocked(sweep_dir / member)
    spent = float((record or {}).get("wall_s") or 0.0)
    if record and record.get("started_at"):  # the time it ran in this Tune run
        spent += max(0.0, ended.ended_at.get(plan.trial, time.time()) - record["started_at"])
    if plan.trial in ended.errors and not stop.is_set():
        status, reason = "failed", f"the Tune trial raised: {ended.errors[plan.trial]}"
    elif plan.trial in ended.completed:
        status, reason = "stopped_asha", "ASHA (Ray Tune) stopped it at a rung"
    else:  # cut off, or never started, by the stop request
        return summarize(sweep_dir, spec, plan, "interrupted",
                         "the sweep was stopped; --resume continues it", spent)
    cut = ended.epochs.get(plan.trial) if status == "stopped_asha" else None
    record = summarize(sweep_dir, spec, plan, status, reason, spent, cut)  # ASHA's epochs only
    append_record(sweep_dir, record)
    return record
