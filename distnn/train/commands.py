"""`distnn train` and `distnn evaluate`.

Run directory contract (scripts depend on it): <run_dir>/config.yaml (resolved config),
<run_dir>/metrics.jsonl, <run_dir>/checkpoints/last.h5 and best.h5.
Exit codes: 0 finished (including early stopping), 2 bad input, 3 diverged,
75 stopped by SIGTERM/SIGUSR1 after a checkpoint (resume with --resume auto).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

EXIT_BAD_INPUT = 2


def register_train_commands(sub) -> None:
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
    p.add_argument("--backend", default=None, help="communication backend: auto, local, mpi, "
                                                   "ray (with --workers N)")
    from distnn.train.ray_launch import add_ray_arguments

    add_ray_arguments(p)
    p.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on a dataset split")
    e.add_argument("checkpoint")
    e.add_argument("--dataset", default=None, help="dataset name (default: the training one)")
    e.add_argument("--split", default="test", choices=("train", "test"))
    e.add_argument("--data-dir", default=None)
    e.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    e.set_defaults(func=cmd_evaluate)


def latest_run_dir(name: str) -> Path | None:
    """The newest runs/<name>-* that holds a last checkpoint (for --resume auto)."""
    found = sorted(p for p in Path("runs").glob(f"{name}-*") if (p / "checkpoints/last.h5").exists())
    return found[-1] if found else None


def resolve_run(args, cfg, comm) -> tuple[Path, Path | None]:
    """Rank 0 decides the run directory and checkpoint to resume; every rank gets its answer."""
    from distnn.config import ConfigError

    decision = None
    if comm.rank == 0:
        run_dir = Path(args.run_dir) if args.run_dir else None
        if run_dir is None and args.resume == "auto":
            run_dir = latest_run_dir(cfg.name)
        if run_dir is None:
            run_dir = Path("runs") / f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        last = run_dir / "checkpoints" / "last.h5"
        if args.resume == "auto":
            resume = last if last.exists() else None
        elif args.resume:
            resume = Path(args.resume)
        else:
            resume = None
            if last.exists():
                decision = f"run directory {run_dir} already holds a run ({last}); pass " \
                           f"--resume auto to continue it, or choose another --run-dir"
        decision = decision or (str(run_dir), str(resume) if resume else None)
    decision = comm.bcast_obj(decision)
    if isinstance(decision, str):
        raise ConfigError(decision)
    return Path(decision[0]), (Path(decision[1]) if decision[1] else None)


def cmd_train(args) -> int:
    from distnn.comm import create_communicator, detect_backend, install_excepthook
    from distnn.config import ConfigError, load_config
    from distnn.data.errors import DataError
    from distnn.train.errors import CheckpointError, TrainingDiverged
    from distnn.train.loop import EXIT_DIVERGED
    from distnn.train.run import train

    try:
        cfg = load_config(args.config, args.overrides)
    except ConfigError as exc:
        print(f"distnn train: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    backend = args.backend or cfg.comm.backend
    backend = detect_backend() if backend == "auto" else backend
    if backend == "ray":  # this process is the Ray driver; the workers run train() below
        from distnn.train.ray_launch import launch

        return launch(args, cfg)
    comm = create_communicator(backend, timeout=cfg.comm.timeout or None)
    if comm.size > 1:
        install_excepthook(comm)  # an exception on one rank ends the job, no rank left waiting
        # When a rank is killed, mpiexec names only its pid: this line maps pids to ranks.
        sys.stderr.write(f"distnn: rank {comm.rank} of {comm.size} is pid {os.getpid()} on "
                         f"{socket.gethostname()}\n")  # one write: lines of ranks don't mix
        sys.stderr.flush()
    try:
        run_dir, resume = resolve_run(args, cfg, comm)
        result = train(cfg, comm, run_dir, resume)
    except (ConfigError, CheckpointError, DataError) as exc:
        # Every rank raised the same error (decided on rank 0 and broadcast, or from the
        # same config): exit cleanly, no abort needed.
        print(f"distnn train [rank {comm.rank}]: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingDiverged as exc:
        if comm.rank == 0:
            print(f"distnn train: diverged: {exc}", file=sys.stderr)
        return EXIT_DIVERGED
    if comm.rank == 0:
        _report(result)
    return result.exit_code


def _report(result) -> None:
    from distnn.train.loop import EXIT_RESUMABLE

    if result.exit_code == EXIT_RESUMABLE:
        print(f"stopped by signal after a checkpoint; resume with: distnn train ... "
              f"--run-dir {result.run_dir} --resume auto", file=sys.stderr)
    elif result.test is not None:
        t = result.test
        print(f"test accuracy {t['accuracy']:.4f}  loss {t['loss']:.4f}  n {t['n']}  "
              f"(run directory {result.run_dir})")


def cmd_evaluate(args) -> int:
    from distnn.comm import create_communicator, detect_backend
    from distnn.train.errors import CheckpointError
    from distnn.train.evaluate_checkpoint import evaluate_checkpoint

    comm = create_communicator(detect_backend())
    try:
        result = evaluate_checkpoint(Path(args.checkpoint), comm, args.dataset, args.split,
                                     args.data_dir)
    except CheckpointError as exc:
        print(f"distnn evaluate: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if comm.rank == 0:
        if args.json:
            print(json.dumps(result))
        else:
            print(f"{result['split']} accuracy {result['accuracy']:.4f}  loss "
                  f"{result['loss']:.4f}  n {result['n']}")
    return 0
