"""`distnn train` and `distnn evaluate`: parse, build the config and the communicator, and
hand over to the worker entry (or, for `--backend ray`, to the Ray driver).

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
from distnn.config import ConfigError, load_config
from distnn.data.errors import DataError
from distnn.exit_codes import ExitCode
from distnn.launch.worker import one_line, report, run_worker
from distnn.train import signals
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
    _add_ray_arguments(p)
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset split")
    e.add_argument("checkpoint")
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
    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        console.err(f"distnn train: {one_line(exc)}")
        return ExitCode.BAD_INPUT
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
    comm = create_communicator(detect_backend())
    try:
        result = evaluate_checkpoint(Path(args.checkpoint), comm, args.dataset, args.split,
                                     args.data_dir)
    except (CheckpointError, DataError) as exc:
        console.err(f"distnn evaluate: {one_line(exc)}")
        return ExitCode.BAD_INPUT
    if comm.rank == 0:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['split']} accuracy {result['accuracy']:.4f}  loss "
                  f"{result['loss']:.4f}  n {result['n']}")
    return ExitCode.OK
