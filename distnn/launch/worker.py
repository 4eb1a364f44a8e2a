"""The one worker entry: what every rank of every backend runs (the CLI process, an MPI rank,
a Ray actor), and the single place where an exception becomes an exit code."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from distnn.comm import Communicator
from distnn.config import Config, ConfigError
from distnn.data.errors import DataError
from distnn.exit_codes import ExitCode
from distnn.launch.rundir import resolve_run
from distnn.train.errors import CheckpointError, TrainingDiverged
from distnn.train.run import train


@dataclass(frozen=True)
class Outcome:
    """What a worker hands back: picklable, so a Ray actor can return it to the driver."""

    exit_code: int  # an ExitCode, or the code a rank aborted with
    run_dir: Path | None
    test: dict | None  # accuracy, loss, n on the test split (None unless finished)


def run_worker(cfg: Config, comm: Communicator, run_dir: str | None,
               resume: str | None) -> Outcome:
    """Train `cfg` on this rank in the run directory that `run_dir`/`resume` select (see
    launch.rundir). Bad input and divergence become their exit codes here, with one line on
    stderr; any other exception propagates (the backend's fail-fast hook ends the job).
    Collective: all ranks must call."""
    try:
        rd, start = resolve_run(run_dir, resume, cfg, comm)
        result = train(cfg, comm, rd, start)
    except (ConfigError, CheckpointError, DataError) as exc:
        # Every rank raised the same error (decided on rank 0 and broadcast, or from the same
        # config): exit cleanly, no abort needed.
        print(f"distnn train [rank {comm.rank}]: {exc}", file=sys.stderr, flush=True)
        return Outcome(ExitCode.BAD_INPUT, None, None)
    except TrainingDiverged as exc:
        if comm.rank == 0:
            print(f"distnn train: diverged: {exc}", file=sys.stderr, flush=True)
        return Outcome(ExitCode.DIVERGED, None, None)
    return Outcome(result.exit_code, result.run_dir, result.test)


def report(outcome: Outcome) -> None:
    """The run's last line for the user (rank 0 / the driver only)."""
    if outcome.exit_code == ExitCode.RESUMABLE:
        print(f"stopped by signal after a checkpoint; resume with: distnn train ... "
              f"--run-dir {outcome.run_dir} --resume auto", file=sys.stderr)
    elif outcome.test is not None:
        t = outcome.test
        print(f"test accuracy {t['accuracy']:.4f}  loss {t['loss']:.4f}  n {t['n']}  "
              f"(run directory {outcome.run_dir})")
