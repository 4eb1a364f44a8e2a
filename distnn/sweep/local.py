"""The local backend: up to `parallel` trials at once as child processes on this machine, ASHA
decided here (sweep/asha.py), no Ray needed. Also what one SLURM array task runs for its trial."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

from distnn.sweep.asha import Asha
from distnn.sweep.plan import describe_stage, stage_plans, stage_space
from distnn.sweep.spec import SweepError, SweepSpec
from distnn.sweep.trial import BAD_INPUT, Judge, TrialPlan, TrialRunner

Print = Callable[[str], None]


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def stage_epochs(spec: SweepSpec, stage: int) -> int:
    return spec.stages[stage].epochs or int((spec.base_raw.get("train") or {}).get("epochs", 3))


def judge_for(spec: SweepSpec, sweep_dir: Path, plan: TrialPlan) -> Judge | None:
    """ASHA's decision for this trial's epoch ends (None: no halving)."""
    es = spec.early_stop
    if es.halving != "asha":
        return None
    last = stage_epochs(spec, plan.stage)
    asha = Asha(Path(sweep_dir) / f"asha-s{plan.stage}.jsonl", es.grace_epochs,
                es.reduction_factor, last, spec.mode)
    # The last epoch's end is no rung: the trial has finished (Tune stops it there anyway).
    return lambda epochs, value: epochs >= last or asha.decide(plan.trial, epochs, value)


def trial_line(rec: dict, metric: str) -> str:
    value = "-" if rec.get("metric") is None else f"{rec['metric']:.4f}"
    return (f"  {rec['trial']}  {rec['status']:<12} {metric} {value}  epochs {rec['epochs']}  "
            f"{rec['wall_s']:.0f} s  {rec['reason']}")


def run_trial(spec: SweepSpec, sweep_dir: Path, plan: TrialPlan, threads: int,
              stop: threading.Event) -> dict:
    return TrialRunner(sweep_dir, spec, plan, threads, judge_for(spec, sweep_dir, plan),
                       stop).run()


def run_local(spec: SweepSpec, sweep_dir: Path, parallel: int, stop: threading.Event,
              say: Print) -> bool:
    """Every stage in turn, `parallel` trials at a time. False when `stop` ended it early."""
    threads = max(1, cores() // (parallel * spec.workers_per_trial))
    for stage in range(len(spec.stages)):
        plans = stage_plans(spec, sweep_dir, stage)
        say(describe_stage(spec, stage, stage_space(spec, sweep_dir, stage)[1]))
        refused = None
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            futures = [pool.submit(run_trial, spec, sweep_dir, p, threads, stop) for p in plans]
            for future in as_completed(futures):
                record = future.result()
                say(trial_line(record, spec.metric))
                if refused is None and record["reason"].startswith(BAD_INPUT):
                    refused = record  # the others would be refused too: stop them
                    stop.set()
        if refused is not None:
            raise SweepError(f"{refused['trial']}: its `distnn train` refused its config: "
                             f"{refused['reason'][len(BAD_INPUT):]}")
        if stop.is_set():
            return False
    return True
