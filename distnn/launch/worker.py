"""The one worker entry: what every rank of every backend runs (the CLI process, an MPI rank,
a Ray actor), and the single place where an exception becomes an exit code."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from distnn import console
from distnn.comm import Communicator
from distnn.config import Config, ConfigError, check_world_size
from distnn.console import one_line
from distnn.data.errors import DataError
from distnn.exit_codes import ExitCode
from distnn.launch.rundir import resolve_run
from distnn.storage.mirror import shown
from distnn.train.errors import CheckpointError, CheckpointWriteError, TrainingDiverged
from distnn.train.run import train


@dataclass(frozen=True)
class Outcome:
    """What a worker hands back: picklable, so a Ray actor can return it to the driver."""

    exit_code: int  # an ExitCode, or the code a rank aborted with
    run_dir: Path | str | None  # str: a URL (s3://...)
    test: dict | None  # accuracy, loss, n on the test split (None unless finished)


def run_worker(cfg: Config, comm: Communicator, run_dir: str | None,
               resume: str | None, lock: bool = True) -> Outcome:
    """Train `cfg` on this rank in the run directory that `run_dir`/`resume` select (see
    launch.rundir), holding its lock unless `lock` is False (the Ray driver holds it for its
    worker groups). Bad input and divergence become their exit codes here, with one line on
    stderr; any other exception propagates (the backend's fail-fast hook ends the job).
    Collective: all ranks must call."""
    try:
        check_world_size(cfg, comm.size)
        rd, start, held = resolve_run(run_dir, resume, cfg, comm, lock)
        where = shown(rd)  # a staged run directory is reported by its URL
        try:
            result = train(cfg, comm, rd, start)
        finally:
            if held is not None:
                held.release()
    except (ConfigError, CheckpointError, DataError) as exc:
        # Every rank raised the same error (decided on rank 0 and broadcast, or from the same
        # config): exit cleanly, no abort needed.
        console.err(f"distnn train [rank {comm.rank}]: {one_line(exc)}")
        return Outcome(ExitCode.BAD_INPUT, None, None)
    except TrainingDiverged as exc:
        if comm.rank == 0:
            console.err(f"distnn train: diverged: {exc}")
        return Outcome(ExitCode.DIVERGED, None, None)
    except CheckpointWriteError as exc:
        # Rank 0's write failed and it told every rank (train/keeper.py): all end alike.
        if comm.rank == 0:
            console.err(f"distnn train: checkpoint write failed: {exc}")
        return Outcome(ExitCode.WRITE_FAILED, None, None)
    return Outcome(result.exit_code, where, result.test)


def report(outcome: Outcome) -> None:
    """The run's last line for the user (rank 0 / the driver only)."""
    if outcome.exit_code == ExitCode.RESUMABLE:
        console.err(f"stopped by signal after a checkpoint; resume with: distnn train ... "
                    f"--run-dir {outcome.run_dir} --resume auto")
    elif outcome.test is not None:
        t = outcome.test
        print(f"test accuracy {t['accuracy']:.4f}  loss {t['loss']:.4f}  n {t['n']}  "
              f"(run directory {outcome.run_dir})")
