"""A real one-node SLURM cluster (munged + slurmctld + slurmd) in a private directory.

Recipe: ../shared/notes/slurm-one-node.md, made private so that runs do not collide: every
file (slurm.conf, munge key and socket, state, spool, logs, pid files) lives under one
directory, the daemons listen on free ports, and every client finds the cluster through
SLURM_CONF in `Cluster.env` (jobs inherit it, so `scontrol requeue` inside a job works).
The daemons are stopped by the pids they wrote, never by name.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SLURM_BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "scontrol", "scancel", "sinfo")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")


def which(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    for d in SBIN:
        if os.access(f"{d}/{name}", os.X_OK):
            return f"{d}/{name}"
    return None


def ensure_installed(timeout: float = 600) -> str | None:
    """Install Debian's slurm-wlm + munge when missing; return a reason string if impossible."""
    if all(which(b) for b in SLURM_BINARIES):
        return None
    if os.geteuid() != 0:
        return "slurm-wlm/munge not installed and not root (cannot apt-get install them)"
    if not shutil.which("apt-get"):
        return "slurm-wlm/munge not installed and no apt-get to install them"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        for cmd in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "slurm-wlm", "munge"]):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
            if out.returncode != 0:
                return f"cannot install slurm-wlm/munge: {' '.join(cmd)} failed: " \
                       f"{(out.stderr or out.stdout).strip()[-500:]}"
    except subprocess.TimeoutExpired:
        return f"cannot install slurm-wlm/munge: apt-get timed out after {timeout} s"
    missing = [b for b in SLURM_BINARIES if not which(b)]
    return f"slurm-wlm/munge installed but {missing} still missing" if missing else None


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cluster:
    def __init__(self, root: Path, cred_expire: int = 5):
        self.root = Path(root)
        # cred_expire also sets how long a requeued job waits before it may start again
        # (default 120 s); a few seconds keep the requeue test short.
        self.cred_expire = cred_expire
        self.host = socket.gethostname()
        self.conf = self.root / "slurm.conf"
        self.munge_socket = self.root / "munge" / "munge.socket"
        self.pidfiles = {"slurmd": self.root / "slurmd.pid",
                         "slurmctld": self.root / "slurmctld.pid",
                         "munged": self.root / "munge" / "munged.pid"}
        self.env = dict(os.environ, SLURM_CONF=str(self.conf))
        self.ncpus = os.cpu_count() or 1

    # -- life cycle ------------------------------------------------------------------------
    def start(self, timeout: float = 60) -> None:
        r = self.root
        for d in ("munge", "state", "spool", "log"):
            (r / d).mkdir(parents=True, exist_ok=True)
        os.chmod(r / "munge", 0o700)
        key = r / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        os.chmod(key, 0o400)
        ctld_port, slurmd_port = free_ports(2)
        self.conf.write_text(f"""\
ClusterName=distnntest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire={self.cred_expire}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pidfiles['slurmctld']}
SlurmdPidFile={self.pidfiles['slurmd']}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.ncpus} RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        self._run([which("munged"), "--force", f"--socket={self.munge_socket}",
                   f"--key-file={key}", f"--pid-file={self.pidfiles['munged']}",
                   f"--log-file={r}/munge/munged.log", f"--seed-file={r}/munge/munged.seed"])
        self._wait(lambda: self.munge_socket.exists(), 10, "munged's socket")
        # -i: ignore any state (fresh cluster); the state dir is private anyway.
        self._run([which("slurmctld"), "-i", "-f", str(self.conf)])
        self._run([which("slurmd"), "-f", str(self.conf)])
        self._wait(self._node_idle, timeout, "the node to be idle in sinfo")

    def stop(self) -> None:
        """Cancel this cluster's jobs, then stop its daemons by the pids in its own pid files."""
        if self._pid("slurmctld") is not None and _alive(self._pid("slurmctld")):
            try:
                self.cmd("scancel", "--full", "--user", pwd.getpwuid(os.getuid()).pw_name,
                         check=False, timeout=10)
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and self.cmd(
                        "squeue", "-h", "-t", "RUNNING,COMPLETING", check=False,
                        timeout=10).stdout.strip():
                    time.sleep(0.2)
            except (subprocess.TimeoutExpired, OSError):
                pass
        for name in ("slurmd", "slurmctld", "munged"):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.1)
            if _alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def log_tail(self, n: int = 40) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*.log")):
            lines = f.read_text(errors="replace").splitlines()[-n:]
            out.append(f"==> {f.name}\n" + "\n".join(lines))
        return "\n".join(out)

    # -- clients ---------------------------------------------------------------------------
    def cmd(self, *args: str, timeout: float = 30, check: bool = True):
        out = subprocess.run([which(args[0]), *args[1:]], capture_output=True, text=True,
                             timeout=timeout, env=self.env)
        if check and out.returncode != 0:
            raise RuntimeError(f"{' '.join(args)} -> {out.returncode}: {out.stderr}\n"
                               f"{self.log_tail()}")
        return out

    def sbatch(self, *args: str, env: dict | None = None, timeout: float = 30) -> int:
        full = dict(self.env, **(env or {}))
        for k in [k for k in full if k.startswith(("SLURM_", "SBATCH_"))]:
            if k != "SLURM_CONF":
                full.pop(k)  # a test run inside another job must not leak its settings
        out = subprocess.run([which("sbatch"), "--parsable", *args], capture_output=True,
                             text=True, timeout=timeout, env=full)
        if out.returncode != 0:
            raise RuntimeError(f"sbatch {' '.join(args)} -> {out.returncode}: {out.stderr}")
        return int(out.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """`scontrol show job` as a dict (JobState, Restarts, ExitCode, ...)."""
        out = self.cmd("scontrol", "show", "job", "-o", str(job_id), check=False)
        fields = {}
        for tok in out.stdout.split():
            k, _, v = tok.partition("=")
            fields.setdefault(k, v)
        return fields

    def wait_job(self, job_id: int, states: tuple[str, ...], timeout: float) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        info: dict[str, str] = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {info}\n"
                             f"{self.log_tail()}")

    # -- internals -------------------------------------------------------------------------
    def _node_idle(self) -> bool:
        try:
            out = self.cmd("sinfo", "-h", "-o", "%t", check=False, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return out.returncode == 0 and out.stdout.strip() == "idle"

    def _pid(self, name: str) -> int | None:
        try:
            return int(self.pidfiles[name].read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def _run(self, cmd: list) -> None:
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=30,
                             env=self.env)
        if out.returncode != 0:
            self.stop()
            raise RuntimeError(f"{cmd[0]} failed ({out.returncode}): {out.stderr}\n"
                               f"{self.log_tail()}")

    def _wait(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"timed out after {timeout} s waiting for {what}\n"
                                   f"{self.log_tail()}")
            time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie we are not the parent of still answers kill(0); check /proc
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False
