"""A real S3-compatible server for the tests: moto's server mode on loopback, one per module.

`Store` starts `python -m moto.server` on a free port, creates a bucket, and gives the
environment every `distnn` subprocess (and this process's own s3fs) needs to reach it: botocore
reads the endpoint from AWS_ENDPOINT_URL. It is stopped by its pid.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.train.runs import wait_for

BUCKET = "distnn-tests"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Store:
    def __init__(self):
        pytest.importorskip("s3fs", reason="s3fs not installed (pip install 'distnn[s3]')")
        pytest.importorskip("moto", reason="moto not installed (pip install 'moto[server]')")
        self.port = _free_port()
        self.log = Path(tempfile.mkdtemp(prefix="dnmoto-")) / "moto.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        home = self.log.parent  # no ~/.aws of the machine's user: only what is set here
        self.env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{self.port}",
                    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                    "AWS_DEFAULT_REGION": "us-east-1",
                    "AWS_CONFIG_FILE": str(home / "config"),
                    "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}

    def wait_ready(self, timeout: float = 60) -> None:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"moto server exited: {self.log.read_text()[-2000:]}")
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        wait_for(up, timeout, "the moto server")

    def fs(self):
        """An s3fs file system on this server (the environment must be set)."""
        import s3fs

        return s3fs.S3FileSystem(use_listings_cache=False, skip_instance_cache=True)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_store(monkeypatch: pytest.MonkeyPatch) -> Store:
    """A running Store with its bucket, its environment set in os.environ (which the tests'
    subprocess helpers copy) through `monkeypatch`."""
    store = Store()
    try:
        store.wait_ready()
        for key, value in store.env.items():
            monkeypatch.setenv(key, value)
        monkeypatch.delenv("AWS_PROFILE", raising=False)
        store.fs().mkdir(BUCKET)
    except BaseException:
        store.stop()
        raise
    return store


def keys(fs, prefix: str) -> list[str]:
    """Every key below s3://BUCKET/prefix, relative to it."""
    root = f"{BUCKET}/{prefix}"
    return sorted(p[len(root) + 1:] for p in fs.find(root))


def fetch(fs, prefix: str, dest: Path) -> Path:
    """A local copy of every object below s3://BUCKET/prefix (to read with h5py)."""
    for name in keys(fs, prefix):
        local = dest / name
        local.parent.mkdir(parents=True, exist_ok=True)
        fs.get_file(f"{BUCKET}/{prefix}/{name}", str(local))
    return dest
