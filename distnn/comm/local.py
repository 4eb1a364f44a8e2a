"""The one-process communicator: rank 0 of 1. Every collective over one rank is the identity."""

from __future__ import annotations

from typing import NoReturn

import numpy as np

from distnn.comm.base import Communicator, check_timeout
from distnn.comm.failfast import flush_and_exit


class LocalCommunicator(Communicator):
    """Size 1, rank 0. Inputs are still checked like every backend's, so code that works here
    does not meet a new error under MPI.

    timeout: accepted (and validated) so a config's comm options work with every backend; a
    collective of one rank never waits, so it is never used.
    """

    name = "local"

    def __init__(self, timeout: float | None = None):
        self.timeout = check_timeout(timeout)
        self._rank, self._size = 0, 1

    def _allreduce(self, buf: np.ndarray, op: str) -> None:
        pass  # sum, max or min over one rank leaves the buffer unchanged

    def _broadcast(self, buf: np.ndarray, root: int) -> None:
        pass  # root is 0, the only rank: its buffer already is root's

    def _barrier(self) -> None:
        pass

    def abort(self, message: str, code: int = 1) -> NoReturn:
        """Print `message` to stderr and end this process (the whole job) with status `code`,
        without running cleanup that could block. Not collective."""
        self._print_abort(message)
        flush_and_exit(code)
