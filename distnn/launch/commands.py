"""`distnn train` and `distnn evaluate`: parse, build the config and the communicator, and
hand over to the worker entry (or, for `--backend ray`, to the Ray driver). `distnn evaluate`
also scores ensembles: `--ensemble RUN_DIR ...`, or `--ensemble-top K SWEEP_DIR` (the members of
a sweep's K best trials, from its records: distnn/sweep/records.py).

Exit codes: distnn/exit_codes.py (0 finished, 2 bad input, 3 diverged, 75 stopped by
SIGTERM/SIGUSR1 after a checkpoint: resume with --resume auto).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import socket
import sys
from pathlib import Path

from distnn import console
from distnn.comm import (
    BACKENDS,
    INSTALL_HINTS,
    create_communicator,
    detect_backend,
    install_excepthook,
)
from distnn.config import ConfigError, load_config, parse_yaml, with_absolute_paths
from distnn.data.errors import DataError
from distnn.exit_codes import ExitCode
from distnn.launch.worker import one_line, report, run_worker
from distnn.storage import is_url
from distnn.sweep.records import LOWER_IS_BETTER, TRIALS, ranked, read_trials
from distnn.train import signals
from distnn.train.ensemble import evaluate_ensemble
from distnn.train.errors import CheckpointError
from distnn.train.evaluate_checkpoint import evaluate_checkpoint


def register_train_commands(sub: argparse._SubParsersAction) -> None:
    """Add `train` and `evaluate` to the `distnn` subcommands."""
    p = sub.add_parser("train", help="train a model (locally, or under mpirun for MPI)")
    p.add_argument("config", nargs="?", default=None,
                   help="YAML file or bundled config name (quickstart, mnist, fashion_mnist, "
                        "cifar10); default: quickstart on the bundled mini dataset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set train.epochs=5 (repeatable)")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<name>-<time>)")
    p.add_argument("--resume", default=None, metavar="auto|PATH",
                   help="'auto': continue from the run directory's last checkpoint if there is "
                        "one; or a checkpoint path")
    p.add_argument("--backend", default=None, choices=("auto", *BACKENDS),
                   help="communication backend (default: the config's comm.backend, auto); "
                        "ray runs --workers N actors")
    p.add_argument("--init-from", default=None, metavar="CHECKPOINT",
                   help="start from this checkpoint's parameters where layer names and shapes "
                        "match (train.init_from; see train.reset, train.freeze)")
    _add_ray_arguments(p)
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint, or an ensemble of runs, on a "
                                        "dataset split")
    e.add_argument("checkpoint", nargs="?", default=None, metavar="CHECKPOINT|SWEEP_DIR",
                   help="a checkpoint file; with --ensemble-top K: the sweep directory")
    e.add_argument("--ensemble", nargs="+", default=None, metavar="RUN_DIR",
                   help="evaluate the mean of these runs' softmax probabilities (each run "
                        "directory's checkpoints/best.h5, or a .h5 checkpoint file)")
    e.add_argument("--ensemble-top", default=None, metavar="K",
                   help="ensemble the K best trials of the sweep directory given as the "
                        "positional argument (every member run of each trial)")
    e.add_argument("--dataset", default=None, help="dataset name (default: the training one)")
    e.add_argument("--split", default="test", choices=("train", "test"))
    e.add_argument("--data-dir", default=None)
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.set_defaults(func=cmd_evaluate)


def _add_ray_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", default=None, metavar="N|MIN:MAX",
                   help="--backend ray: number of worker actors (one CPU each; default: the "
                        "config's comm.workers, 2); MIN:MAX: elastic, on as many as there are "
                        "CPUs for (see comm.replace_timeout)")
    p.add_argument("--address", default=None, metavar="ADDR",
                   help="--backend ray: Ray cluster address (default: $RAY_ADDRESS, else start a "
                        "local Ray)")
    p.add_argument("--max-failures", type=int, default=None, metavar="K",
                   help="--backend ray: restart the worker group from the last checkpoint at "
                        "most K times when a worker dies (default: the config's "
                        "comm.max_failures, 0)")


def cmd_train(args: argparse.Namespace) -> int:
    signals.hold_for_process()  # a stop request from here to exit ends the run with 75
    overrides = list(args.overrides)
    if args.init_from is not None:  # a JSON string is YAML: the path stays a string
        overrides.append(f"train.init_from={json.dumps(args.init_from)}")
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        console.err(f"distnn train: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    cfg = with_absolute_paths(cfg)  # train.init_from: relative to here, not to a worker
    backend = args.backend or cfg.comm.backend
    backend = detect_backend() if backend == "auto" else backend
    if backend == "ray":  # this process is the Ray driver; the actors run run_worker
        if importlib.util.find_spec("ray") is None:
            console.err(f"distnn train: the 'ray' backend needs ray, which is not installed: "
                        f"{INSTALL_HINTS['ray']}")
            return ExitCode.BAD_INPUT
        from distnn.launch import ray_driver  # imports ray: only when chosen

        return ray_driver.launch(args, cfg)
    comm = create_communicator(backend, timeout=cfg.comm.timeout or None)
    if comm.size > 1:
        install_excepthook(comm)  # an exception on one rank ends the job, no rank left waiting
        # When a rank is killed, mpiexec names only its pid: this line maps pids to ranks.
        sys.stderr.write(f"distnn: rank {comm.rank} of {comm.size} is pid {os.getpid()} on "
                         f"{socket.gethostname()}\n")  # one write: lines of ranks don't mix
        sys.stderr.flush()
    outcome = run_worker(cfg, comm, args.run_dir, args.resume)
    if comm.rank == 0:
        report(outcome)
    return outcome.exit_code


def cmd_evaluate(args: argparse.Namespace) -> int:
    try:
        members = ensemble_members(args)  # checked on every rank alike, before any collective
    except ValueError as exc:
        console.err(f"distnn evaluate: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    comm = create_communicator(detect_backend())
    try:
        if members is None:
            where = args.checkpoint if is_url(args.checkpoint) else Path(args.checkpoint)
            result = evaluate_checkpoint(where, comm, args.dataset, args.split, args.data_dir)
        else:
            result = evaluate_ensemble(members, comm, args.dataset, args.split, args.data_dir)
    except (CheckpointError, DataError) as exc:
        console.err(f"distnn evaluate: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    if comm.rank != 0:
        return ExitCode.OK
    if args.json:
        print(json.dumps(result))
    elif members is None:
        print(f"{result['split']} accuracy {result['accuracy']:.4f}  loss "
              f"{result['loss']:.4f}  n {result['n']}")
    else:
        for m in result["members"]:
            print(f"member {m['path']} accuracy {m['accuracy']:.4f} loss {m['loss']:.4f}")
        e = result["ensemble"]
        print(f"ensemble of {len(result['members'])}: {result['split']} accuracy "
              f"{e['accuracy']:.4f} loss {e['loss']:.4f} n {result['n']}")
    return ExitCode.OK


EVALUATE_FORMS = ("expected exactly one of: a CHECKPOINT file; --ensemble RUN_DIR [RUN_DIR ...]; "
                  "--ensemble-top K SWEEP_DIR")


def ensemble_members(args: argparse.Namespace) -> list[Path] | None:
    """The member checkpoints `distnn evaluate` was given (--ensemble or --ensemble-top), or None
    for a single checkpoint. A ValueError (one line) if not exactly one form was given, or a
    member or the sweep cannot be found."""
    forms = [name for name, given in (
        ("a checkpoint", args.checkpoint is not None and args.ensemble_top is None),
        ("--ensemble", args.ensemble is not None),
        ("--ensemble-top", args.ensemble_top is not None)) if given]
    if len(forms) != 1:
        raise ValueError(f"{' and '.join(forms) or 'nothing'} given; {EVALUATE_FORMS}")
    if args.ensemble is not None:
        return [member_checkpoint(Path(arg)) for arg in args.ensemble]
    if args.ensemble_top is not None:
        if args.checkpoint is None:
            raise ValueError(f"--ensemble-top {args.ensemble_top}: no SWEEP_DIR given; "
                             f"expected --ensemble-top K SWEEP_DIR")
        return top_members(Path(args.checkpoint), args.ensemble_top)
    return None


def member_checkpoint(path: Path) -> Path:
    """An ensemble member: a run directory's checkpoints/best.h5, or an existing .h5 file as
    is. ValueError naming `path` if neither exists."""
    if path.is_file() and path.suffix == ".h5":
        return path
    best = path / "checkpoints" / "best.h5"
    if best.is_file():
        return best
    expected = "expected a run directory with checkpoints/best.h5, or a .h5 checkpoint file"
    if path.is_dir():
        raise ValueError(f"{path}: no checkpoints/best.h5 in this run directory; {expected}")
    if path.exists():
        raise ValueError(f"{path}: not a run directory or a .h5 file; {expected}")
    raise ValueError(f"{path}: no such run directory or checkpoint file; {expected}")


def top_members(sweep_dir: Path, k_text: str) -> list[Path]:
    """The member checkpoints of the sweep's `k_text` best trials (ranked by the `metric:` of
    its sweep.yaml, records.ranked), best trial first, each trial's members in their order
    (paths relative to the sweep directory). ValueError (one line) on anything missing."""
    try:
        k = int(k_text)
    except ValueError:
        k = 0
    if k < 1:
        raise ValueError(f"--ensemble-top {k_text!r}: expected a number of trials >= 1")
    spec = sweep_dir / "sweep.yaml"
    try:
        text = spec.read_bytes()
    except OSError as exc:
        raise ValueError(f"{spec}: cannot read: {exc.strerror or exc}; expected a sweep "
                         f"directory (its sweep.yaml and trials.jsonl)") from None
    raw = parse_yaml(text, str(spec))  # a ConfigError (a ValueError) names the file
    metric = raw.get("metric") if isinstance(raw, dict) else None
    if metric not in LOWER_IS_BETTER:
        raise ValueError(f"{spec}: metric: {metric!r}, expected one of "
                         f"{', '.join(LOWER_IS_BETTER)}")
    try:
        best = ranked(read_trials(sweep_dir), metric)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{sweep_dir / TRIALS}: a trial record without {exc}; expected the "
                         f"keys trial, stage, index, metric, members") from None
    if len(best) < k:
        raise ValueError(f"{sweep_dir}: --ensemble-top {k} but only {len(best)} trial(s) have a "
                         f"{metric}; expected K <= {len(best)}")
    paths = []
    for rec in best[:k]:
        members = rec.get("members")
        if not isinstance(members, list) or not members \
                or not all(isinstance(m, str) for m in members):
            raise ValueError(f"{sweep_dir / TRIALS}: trial {rec['trial']!r}: members "
                             f"{members!r}, expected a list of run directories")
        paths += [member_checkpoint(sweep_dir / m) for m in members]
    return paths
