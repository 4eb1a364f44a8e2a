"""A local Ray that the driver started does not outlive the driver, even a SIGKILLed one."""

import os
import re
import signal
from pathlib import Path

import pytest

from tests.train.runs import start, wait_for, write_config


def session_processes(session: str) -> list[int]:
    """Pids whose command line names the Ray session directory `session`."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if session in cmdline:
                found.append(int(entry.name))
    return found


def children_session(pid: int) -> str | None:
    """The session_... name in the command line of a child of `pid` (Ray's gcs_server)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            match = re.search(r"session_[0-9_-]+", cmdline)
            if match:
                return match.group(0)
    return None


def test_killed_driver_leaves_no_ray_process(tmp_path):
    pytest.importorskip("ray")
    cfg = write_config(tmp_path / "c.yaml", train={"epochs": 200},
                       checkpoint={"every_epochs": 0})
    driver = start(["train", str(cfg), "--backend", "ray", "--workers", "1",
                    "--run-dir", str(tmp_path / "run")])
    try:
        lines: list[str] = []

        def worker_started():
            assert driver.stderr is not None and driver.poll() is None
            lines.append(driver.stderr.readline())
            return "rank 0 of 1 is pid" in lines[-1]

        wait_for(worker_started, 180, "the Ray worker to start")
        session = children_session(driver.pid)
        assert session, "no Ray session process under the driver"
        assert len(session_processes(session)) >= 3  # gcs, raylet, the worker, ...
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=30)
    # Ray's processes notice their driver is gone: give them a bounded time to exit.
    wait_for(lambda: not session_processes(session), 60,
             f"the processes of {session} to end after the driver was killed")
