"""The Ray worker actor: one rank of a `--backend ray` run (see ray_driver.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
import sys

import ray

from distnn.comm import install_excepthook
from distnn.comm.failfast import report_and_abort
from distnn.comm.ray import RayCommunicator
from distnn.config import Config
from distnn.launch.worker import Outcome, run_worker
from distnn.train import signals


class Worker:
    """One rank. Methods run in the actor process's main thread (the loop's signal handlers
    need it): `info`, then `connect`, then `run`. The driver makes it an actor with
    ray.remote."""

    def __init__(self) -> None:
        self.comm: RayCommunicator | None = None

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def connect(self, rank: int, size: int, rendezvous, cfg: Config) -> str:
        """Build this rank's RayCommunicator (`comm.transport`) and run one barrier, which
        decides the transport on every rank; returns it: "shm" or "object_store" ("auto" for
        a group of one, which never communicates). Collective: every actor of the group calls
        it, once, before `run`."""
        signals.hold_for_process()  # the driver forwards its stop signals to rank 0
        self.comm = RayCommunicator(rank, size, rendezvous, timeout=cfg.comm.timeout or None,
                                    transport=cfg.comm.transport)
        install_excepthook(self.comm)  # a dying helper thread (prefetch) ends the group
        try:
            self.comm.barrier()
        except Exception:
            report_and_abort(self.comm, *sys.exc_info())
        return self.comm.transport

    def run(self, cfg: Config, run_dir: str, resume: str | None, cwd: str | None) -> Outcome:
        """The same run_worker as every other backend, on the communicator of `connect`."""
        comm = self.comm
        assert comm is not None, "Worker.connect comes before Worker.run"
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the config mean what they mean for the driver
        if cfg.train.threads == 0:
            # Each actor owns one CPU: one thread (os.cpu_count() sees the whole node).
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=1))
        try:
            return run_worker(cfg, comm, run_dir, resume, lock=False)  # the driver holds it
        except Exception:  # any other error ends every rank, as under MPI
            report_and_abort(comm, *sys.exc_info())
        finally:
            comm.close()
