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
    need it): `info` before `run`. The driver makes it an actor with ray.remote."""

    def info(self) -> dict:
        return {"pid": os.getpid(), "host": socket.gethostname(),
                "node_id": ray.get_runtime_context().get_node_id()}

    def run(self, rank: int, size: int, rendezvous, cfg: Config, run_dir: str,
            resume: str | None, cwd: str | None) -> Outcome:
        """The same run_worker as every other backend, on a RayCommunicator."""
        signals.hold_for_process()  # the driver forwards its stop signals to rank 0
        if cwd and os.path.isdir(cwd):
            os.chdir(cwd)  # relative paths in the config mean what they mean for the driver
        if cfg.train.threads == 0:
            # Each actor owns one CPU: one thread (os.cpu_count() sees the whole node).
            cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, threads=1))
        comm = RayCommunicator(rank, size, rendezvous, timeout=cfg.comm.timeout or None)
        install_excepthook(comm)  # a dying helper thread (prefetch) ends the group
        try:
            return run_worker(cfg, comm, run_dir, resume, lock=False)  # the driver holds it
        except Exception:  # any other error ends every rank, as under MPI
            report_and_abort(comm, *sys.exc_info())
        finally:
            comm.close()
