"""The exit codes of every `distnn` command: one table, documented in the README.

Scripts and schedulers depend on them (SLURM requeues on RESUMABLE), so values never change.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0  # finished (early stopping included)
    FAILED = 1  # a worker died without restarts left, a rank aborted, a dataset check failed
    BAD_INPUT = 2  # config, arguments, data or checkpoint rejected: one line names the value
    DIVERGED = 3  # loss NaN/inf or above train.divergence_factor x the initial loss
    WRITE_FAILED = 74  # a checkpoint could not be written (disk full, I/O error; EX_IOERR)
    RESUMABLE = 75  # stopped by SIGTERM/SIGUSR1 after writing last.h5 (EX_TEMPFAIL)
