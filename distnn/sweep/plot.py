"""distnn sweep plot SWEEP_DIR: the figures of a random search, as PNGs in --out.

- search.png: one panel per searched key, each trial's metric against its sampled value (log x
  for loguniform keys, the choices side by side for choice keys), one colour per stage; a trial
  that ended without a metric (diverged, failed) is an 'x' on the panel's bottom edge, so the
  regions of the space that diverge show; the best trial is ringed.
- curves.png: the validation metric per epoch of the --top N best trials (their first member's
  epoch-end val lines), each labelled with its id and parameters.

The points come from pure functions (`search_points`, `curve_points`); the `build_*` functions
draw them and return the Figure. Needs the `plot` extra (matplotlib, imported in `main` and the
builders only).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from distnn import console
from distnn.config import ConfigError
from distnn.config.loading import parse_yaml
from distnn.exit_codes import ExitCode
from distnn.sweep import records
from distnn.train.checkpoint import replace_atomically
from distnn.watch import figures
from distnn.watch.figures import Drawn
from distnn.watch.plot import png_bytes, use_agg

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PROG = "distnn sweep plot"
SPEC = "sweep.yaml"
Point = tuple[Any, float | None]  # (sampled value, the trial's metric or None)


class BadInput(Exception):
    """One line for the user: the sweep directory or file that is wrong, and how."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR",
                        help="the sweep directory (holding sweep.yaml and trials.jsonl)")
    parser.add_argument("--top", type=int, default=5, metavar="N",
                        help="curves.png shows the N best trials (default 5)")
    parser.add_argument("--out", type=Path, metavar="DIR",
                        help="where the PNGs go (default: SWEEP_DIR/plots)")


def read_spec(sweep_dir: Path) -> dict:
    """sweep.yaml, checked for what the figures use: `metric` and `space` (dotted key -> a
    mapping of one distribution name to its arguments)."""
    path = sweep_dir / SPEC
    try:
        spec = parse_yaml(path.read_bytes(), str(path))
    except FileNotFoundError:
        raise BadInput(f"{sweep_dir}: no {SPEC} (not a sweep directory)") from None
    except OSError as exc:
        raise BadInput(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except ConfigError as exc:
        raise BadInput(console.one_line(exc)) from None
    if not isinstance(spec, dict):
        raise BadInput(f"{path}: expected a mapping")
    if spec.get("metric") not in records.LOWER_IS_BETTER:
        raise BadInput(f"{path}: metric: {spec.get('metric')!r}, expected one of "
                       f"{', '.join(records.LOWER_IS_BETTER)}")
    space = spec.get("space")
    if not isinstance(space, dict) or not space:
        raise BadInput(f"{path}: space: expected a mapping of dotted keys to distributions")
    for key, dist in space.items():
        if not (isinstance(dist, dict) and len(dist) == 1):
            raise BadInput(f"{path}: space.{key}: {dist!r}, expected one distribution, "
                           f"e.g. {{uniform: [0.0, 1.0]}}")
    return spec


def kind(spec: dict, key: str) -> tuple[str, Any]:
    """(distribution name, its arguments) of a searched key."""
    ((name, arguments),) = spec["space"][key].items()
    return str(name), arguments


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def scored(record: dict) -> float | None:
    """The trial's metric, or None when it has no finite one."""
    value = record.get("metric")
    return float(value) if is_number(value) and math.isfinite(value) else None


def search_points(spec: dict, trials: dict[str, dict]) -> dict[str, dict[int, list[Point]]]:
    """{key: {stage: [(sampled value, metric)]}} for every searched key, stages ascending,
    trials in file order. A trial without a metric is in with None only once it has ended
    (status in records.FINAL: diverged, failed); a running one is left out. Values are as
    sampled (the choice itself for choice keys); a non-number on a numeric key is left out."""
    out: dict[str, dict[int, list[Point]]] = {}
    for key in spec["space"]:
        numeric = kind(spec, key)[0] != "choice"
        stages: dict[int, list[Point]] = {}
        for rec in trials.values():
            params = rec.get("params")
            if not isinstance(params, dict) or key not in params:
                continue
            value, metric = params[key], scored(rec)
            if (numeric and not is_number(value)) or (
                    metric is None and rec.get("status") not in records.FINAL):
                continue
            stages.setdefault(int(rec.get("stage", 0)), []).append((value, metric))
        out[key] = dict(sorted(stages.items()))
    return out


def curve_points(sweep_dir: Path, record: dict, metric: str) -> list[tuple[float, float]]:
    """[(epochs completed, value)] of `metric` ("val_accuracy" reads "accuracy") from the
    epoch-end val lines of the trial's first member's metrics.jsonl: a val line counts once its
    epoch has had a train line earlier in the file (a mid-epoch validation comes before it).
    A repeated epoch keeps its newest line; non-finite values and unreadable lines are skipped;
    [] when the file is missing."""
    members = record.get("members") or []
    if not (isinstance(members, list) and members and isinstance(members[0], str)):
        return []
    ends = records.epoch_ends(Path(sweep_dir) / members[0] / "metrics.jsonl", metric)
    return [(epoch + 1, value) for epoch, value in sorted(ends.items()) if math.isfinite(value)]


def short(value: Any) -> str:
    """A parameter value for a label: floats to 3 significant digits, the rest as written."""
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def short_names(keys: list[str]) -> dict[str, str]:
    """Each dotted key as its shortest dotted suffix that no other key ends with."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            name = ".".join(parts[-n:])
            if not any(o != key and (o == name or o.endswith("." + name)) for o in keys):
                break
        out[key] = name
    return out


def stage_label(spec: dict, stage: int) -> str:
    """"stage 1 (5 epochs)", from sweep.yaml's stages (just "stage 1" if it has no epochs)."""
    stages = spec.get("stages")
    entry = stages[stage] if isinstance(stages, list) and stage < len(stages) else None
    epochs = entry.get("epochs") if isinstance(entry, dict) else None
    if not is_number(epochs):
        return f"stage {stage}"
    return f"stage {stage} ({epochs} epoch{'' if epochs == 1 else 's'})"


def build_search(spec: dict, trials: dict[str, dict]) -> Figure:
    """One panel per searched key (three to a row, shared y); see the module docstring."""
    points = search_points(spec, trials)
    metric = spec["metric"]
    best = records.ranked(trials, metric)[0]
    cols = min(3, len(points))
    rows = -(-len(points) // cols)
    fig = figures._figure(4.2 * cols + 2.4, 3.4 * rows + 0.6)
    axes = fig.subplots(rows, cols, squeeze=False, sharey=True).ravel()
    shown: set[int] = set()
    for ax, (key, stages) in zip(axes, points.items(), strict=False):
        name, arguments = kind(spec, key)
        place = _categorical(ax, arguments, stages) if name == "choice" else (lambda v: v)
        for stage, pts in stages.items():
            shown.add(stage)
            good = [(place(x), y) for x, y in pts if y is not None]
            bad = [place(x) for x, y in pts if y is None]
            style = {"color": figures._color(stage), "ls": "", "gid": f"stage{stage}"}
            ax.plot([x for x, _ in good], [y for _, y in good], marker="o", ms=5, alpha=0.8,
                    **style)
            if bad:
                style["gid"] += ":no metric"
                ax.plot(bad, [0.0] * len(bad), marker="x", ms=8, mew=2, clip_on=False,
                        transform=ax.get_xaxis_transform(), **style)
        value = best.get("params", {}).get(key)
        if value is not None and (name == "choice" or is_number(value)):
            ax.plot([place(value)], [best["metric"]], marker="o", ms=14,
                    mfc="none", mec="k", mew=1.8, ls="", gid="best")
        if name == "loguniform":
            ax.set_xscale("log")
        ax.set_title(key, fontsize="medium")
        ax.set_xlabel(f"{name} {arguments}" if name != "choice" else "choice")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes[len(points):]:
        ax.set_visible(False)
    for ax in axes[::cols]:
        ax.set_ylabel(metric)
    entries: list[tuple[str, dict[str, Any]]] = [
        (stage_label(spec, s), {"color": figures._color(s), "marker": "o", "ls": ""})
        for s in sorted(shown)]
    entries += [("no metric (diverged, failed)", {"color": "0.3", "marker": "x", "ls": "",
                                                  "mew": 2}),
                (f"best: {best['trial']} ({best['metric']:.4g})",
                 {"marker": "o", "ms": 12, "mfc": "none", "mec": "k", "ls": ""})]
    figures._legend(fig, entries, "trials", "upper")
    better = "lower" if records.LOWER_IS_BETTER[metric] else "higher"
    fig.suptitle(f"random search: {metric} per sampled value ({better} is better)")
    return fig


def _categorical(ax, choices: Any, stages: dict[int, list[Point]]):
    """Tick the choices at 0, 1, ...; a value not among them gets a position after them.
    Returns value -> x position."""
    listed = choices if isinstance(choices, list) else []
    labels = list(dict.fromkeys([short(c) for c in listed]
                                + [short(x) for pts in stages.values() for x, _ in pts]))
    ax.set_xticks(range(len(labels)), labels)
    ax.set_xlim(-0.5, len(labels) - 0.5)
    return lambda value: labels.index(short(value))


def curve_label(record: dict, names: dict[str, str]) -> str:
    params = record.get("params") or {}
    return f"{record['trial']}: " + ", ".join(
        f"{names.get(k, k)}={short(v)}" for k, v in params.items())


def build_curves(sweep_dir: Path, spec: dict, trials: dict[str, dict], top: int) -> Figure:
    """The --top best trials' validation metric per epoch (x: epochs completed)."""
    from matplotlib.ticker import MaxNLocator

    metric = spec["metric"]
    names = short_names(list(spec["space"]))
    best = records.ranked(trials, metric)[:top]
    fig = figures._figure(11, 5.2)
    ax = fig.add_subplot()
    for i, rec in enumerate(best):
        pts = curve_points(sweep_dir, rec, metric)
        label = curve_label(rec, names) + ("" if pts else " (no epoch-end val lines)")
        ax.plot([x for x, _ in pts], [y for _, y in pts], "o-", color=figures._color(i), ms=4,
                label=label, gid=rec["trial"])
    which = f"the {len(best)} best trials" if len(best) > 1 else "the best trial"
    ax.set(xlabel="epochs completed", ylabel=metric, title=f"{which} by {metric}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.3)
    fig.legend(loc="outside lower center", fontsize="small")
    return fig


def read_sweep(sweep_dir: Path) -> tuple[dict, dict[str, dict]]:
    """sweep.yaml and the trials' newest records; BadInput if either is missing or no trial
    has a metric."""
    if not sweep_dir.exists():
        raise BadInput(f"{sweep_dir}: no such sweep directory")
    if not sweep_dir.is_dir():
        raise BadInput(f"{sweep_dir}: not a directory (expected a sweep directory)")
    spec = read_spec(sweep_dir)
    if not (sweep_dir / records.TRIALS).is_file():
        raise BadInput(f"{sweep_dir}: no {records.TRIALS} (no trial has started)")
    trials = records.read_trials(sweep_dir)
    if not records.ranked(trials, spec["metric"]):
        raise BadInput(f"{sweep_dir}: no trial has a {spec['metric']} yet "
                       f"({len(trials)} trials in {records.TRIALS})")
    return spec, trials


def main(args: argparse.Namespace) -> int:
    if not use_agg(PROG):
        return ExitCode.BAD_INPUT
    if args.top < 1:
        console.err(f"{PROG}: --top {args.top}: expected at least 1")
        return ExitCode.BAD_INPUT
    sweep_dir = Path(args.sweep_dir)  # a str when `distnn sweep` passes it on
    try:
        spec, trials = read_sweep(sweep_dir)
    except BadInput as exc:
        console.err(f"{PROG}: {exc}")
        return ExitCode.BAD_INPUT
    out = Path(args.out) if args.out is not None else sweep_dir / "plots"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        console.err(f"{PROG}: --out {out}: cannot create it: {exc.strerror or exc}")
        return ExitCode.BAD_INPUT
    drawn = [Drawn("search", build_search(spec, trials)),
             Drawn("curves", build_curves(sweep_dir, spec, trials, args.top))]
    for d in drawn:
        path = out / f"{d.name}.png"
        try:
            replace_atomically(path, png_bytes(d))
        except OSError as exc:
            console.err(f"{PROG}: cannot write {path}: {exc.strerror or exc}")
            return ExitCode.WRITE_FAILED
        print(path, flush=True)
    return ExitCode.OK
