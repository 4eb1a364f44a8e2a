"""The trials of each stage: stage 0 draws from the space; a later stage with
`narrow_around_top: K` draws from the space narrowed around the K best trials of the stage
before it (sample.narrow). Each stage's space is appended to stages.jsonl when it starts."""

from __future__ import annotations

import json
from pathlib import Path

from distnn.sweep.records import locked, ranked, read_trials
from distnn.sweep.sample import draw, narrow
from distnn.sweep.spec import Dimension, SweepError, SweepFailed, SweepSpec, trial_config
from distnn.sweep.trial import TrialPlan, trial_id

STAGES = "stages.jsonl"


def stage_space(spec: SweepSpec, sweep_dir: Path, stage: int) -> tuple[tuple[Dimension, ...],
                                                                      list[str]]:
    """(the space stage `stage` draws from, the trials it was narrowed around)."""
    k = spec.stages[stage].narrow_around_top
    if not k:
        return spec.space, []
    earlier = [r for r in read_trials(sweep_dir).values() if r["stage"] == stage - 1]
    top = ranked(earlier, spec.metric)[:k]
    if not top:
        raise SweepFailed(f"stages[{stage}].narrow_around_top: {k}, but no trial of stage "
                         f"{stage - 1} has a {spec.metric} (all diverged, failed or were "
                         f"stopped before an epoch ended); nothing to narrow around")
    return narrow(spec.space, [r["params"] for r in top]), [r["trial"] for r in top]


def stage_plans(spec: SweepSpec, sweep_dir: Path, stage: int) -> list[TrialPlan]:
    """Every trial of the stage, in index order (the same for the same seed and records),
    each config checked; the stage's space is noted in stages.jsonl once."""
    space, around = stage_space(spec, sweep_dir, stage)
    plans = draws(spec, space, stage)
    check(spec, plans)
    note = {"stage": stage, "trials": spec.stages[stage].trials,
            "epochs": spec.stages[stage].epochs, "around": around,
            "space": {d.key: {d.kind: list(d.values)} for d in space}}
    path = Path(sweep_dir) / STAGES
    with locked(path):  # SLURM array tasks plan the same stage at once: one line per stage
        known = path.read_text().splitlines() if path.exists() else []
        if not any(json.loads(line).get("stage") == stage for line in known if line.strip()):
            with open(path, "a") as fh:
                fh.write(json.dumps(note) + "\n")
    return plans


def draws(spec: SweepSpec, space: tuple[Dimension, ...], stage: int) -> list[TrialPlan]:
    return [TrialPlan(trial_id(stage, i), stage, i, draw(space, spec.seed, stage, i))
            for i in range(spec.stages[stage].trials)]


def check(spec: SweepSpec, plans: list[TrialPlan]) -> None:
    """Every trial's config must build (values valid alone may clash: `optimizer.mu` with
    adam): a SweepError naming the first trial that does not, before any trial runs."""
    for plan in plans:
        try:
            trial_config(spec, plan.params, plan.stage, 0 if spec.folds else None)
        except SweepError as exc:
            raise SweepError(f"{plan.trial} {plan.params}: {exc}") from None


def describe_stage(spec: SweepSpec, stage: int, around: list[str]) -> str:
    st = spec.stages[stage]
    epochs = f"{st.epochs} epoch(s)" if st.epochs else "the base config's epochs"
    where = f", narrowed around {', '.join(around)}" if around else ""
    return f"stage {stage}: {st.trials} trial(s) of {epochs}{where}"
