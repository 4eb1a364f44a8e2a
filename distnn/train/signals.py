"""Stop requests: SIGTERM or SIGUSR1 asks a run to checkpoint and end with exit 75.

A handler only records the request; the loop carries it to every rank in the next step's
allreduce, and `train` checks it (reduced over ranks) after the loop and after the test
evaluation, so a request at any point of a run ends it resumably. `hold_for_process` (the CLI
and the Ray worker call it first thing) keeps the handlers until the process exits: a request
during start-up is not lost, and one after the last step does not kill the process.
`catching` gives a run in a process that did not call it (a test, a notebook) the same, and
gives the previous handlers back afterwards.
"""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # light on purpose: the CLI imports this before numpy (distnn/cli.py)
    from distnn.comm import Communicator

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    """Whether a stop signal arrived on this rank."""

    def __init__(self) -> None:
        self.raised = False

    def handle(self, signum: int, frame: object) -> None:
        self.raised = True

    def anywhere(self, comm: Communicator) -> bool:
        """Whether any rank was asked to stop. Collective: all ranks must call."""
        return bool(comm.allreduce_obj(int(self.raised), "max"))


_REQUEST = StopRequest()
_held_for_process = False


def hold_for_process() -> StopRequest:
    """Install the handlers for the rest of the process's life (main thread only)."""
    global _held_for_process
    if not _held_for_process:
        for sig in STOP_SIGNALS:
            signal.signal(sig, _REQUEST.handle)
        _held_for_process = True
    return _REQUEST


@contextmanager
def catching() -> Iterator[StopRequest]:
    """The process's request if it holds the handlers, else handlers for this block only,
    starting with no request."""
    if _held_for_process:
        yield _REQUEST
        return
    _REQUEST.raised = False
    old = {sig: signal.signal(sig, _REQUEST.handle) for sig in STOP_SIGNALS}
    try:
        yield _REQUEST
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
