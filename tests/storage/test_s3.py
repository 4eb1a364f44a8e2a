"""Run directories, init_from and `distnn evaluate` at s3:// URLs, against a real S3-compatible
server (moto's server mode on loopback, one for the module): every run is a real `distnn`
subprocess; the tests read the store with s3fs."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from distnn.config import ConfigError
from distnn.storage.lock import RemoteLock
from distnn.storage.mirror import Mirror
from distnn.storage.remote import connect, parse, read_checkpoint
from distnn.train.checkpoint import load_checkpoint
from distnn.train.errors import CheckpointError
from tests.distributed.test_mpi_invariance import crcs
from tests.storage.store import BUCKET, fetch, keys, start_store
from tests.train.runs import BIN, env, params, run, run_with_step_fault, write_config

TEMP = "checkpoints/step-000013.h5.tmp-" + "0" * 32  # an upload whose writer died


@pytest.fixture(scope="module")
def store():
    with pytest.MonkeyPatch.context() as mp:
        s = start_store(mp)
        try:
            yield s
        finally:
            s.stop()


def url(prefix: str) -> str:
    return f"s3://{BUCKET}/{prefix}"


def config(tmp_path, **train):
    return write_config(tmp_path / "c.yaml", train={"epochs": 1, "max_steps": 12, **train},
                        checkpoint={"every_steps": 4, "keep_last": 2})


def staged_run(args, tmp, monkeypatch, ranks=None):
    """`distnn ARGS` with TMPDIR a fresh folder (where its staging directory goes), which must
    be empty again when it ends."""
    tmpdir = tmp / f"tmpdir-{len(list(tmp.glob('tmpdir-*')))}"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    out = run(args, ranks=ranks)
    assert not any(p.name.startswith("distnn-run-") for p in tmpdir.iterdir()), out.stderr
    return out


@pytest.fixture(scope="module")
def straight(store, tmp_path_factory):
    """An uninterrupted 12-step run into s3://.../straight, and a local copy of its objects."""
    tmp = tmp_path_factory.mktemp("straight")
    with pytest.MonkeyPatch.context() as mp:
        out = staged_run(["train", str(config(tmp)), "--run-dir", url("straight")], tmp, mp)
    assert out.returncode == 0, out.stderr
    assert f"(run directory {url('straight')})" in out.stdout
    return fetch(store.fs(), "straight", tmp / "copy")


def test_a_run_publishes_its_files_and_no_temporary_key(store, straight):
    assert keys(store.fs(), "straight") == [
        "checkpoints/best.h5", "checkpoints/last.h5", "checkpoints/step-000008.h5",
        "checkpoints/step-000012.h5", "config.yaml", "metrics.jsonl"]  # step 4 pruned
    # last.h5 is a copy of the newest step file; metrics.jsonl ends with the test line
    last, newest = straight / "checkpoints/last.h5", straight / "checkpoints/step-000012.h5"
    assert last.read_bytes() == newest.read_bytes()
    assert crcs(straight)[1] and "max_steps: 12" in (straight / "config.yaml").read_text()


def test_stop_then_resume_from_the_store_equals_the_uninterrupted_run(store, straight,
                                                                       tmp_path, monkeypatch):
    cfg, rd = config(tmp_path), url("stopped")
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    stopped = run_with_step_fault(tmp_path, "os.kill(os.getpid(), signal.SIGTERM)", 0, 6,
                                  ["train", str(cfg), "--run-dir", rd])
    assert stopped.returncode == 75, stopped.stderr
    assert f"--run-dir {rd} --resume auto" in stopped.stderr
    assert not list(tmp_path.glob("distnn-run-*"))  # its staging directory is gone
    got = fetch(store.fs(), "stopped", tmp_path / "stopped")
    assert load_checkpoint(got / "checkpoints/last.h5").step == 6
    # a new process: a new, empty staging directory; everything comes from the store
    resumed = staged_run(["train", str(cfg), "--run-dir", rd, "--resume", "auto"], tmp_path,
                         monkeypatch)
    assert resumed.returncode == 0, resumed.stderr
    done = fetch(store.fs(), "stopped", tmp_path / "done")
    a, b = params(straight / "checkpoints/last.h5"), params(done / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert crcs(done) == crcs(straight)


def test_evaluate_a_checkpoint_in_the_store(straight):
    out = run(["evaluate", url("straight/checkpoints/best.h5"), "--json"])
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    (test,), lines = crcs(straight)[1], crcs(straight)[0]
    assert (got["loss"], got["accuracy"], got["n"]) == test
    assert got["params_crc"] == [c for split, step, c in lines if split == "val"][-1]


def test_init_from_a_url(straight, tmp_path):
    cfg = config(tmp_path, max_steps=3, freeze_until="conv0")
    source = url("straight/checkpoints/last.h5")
    out = run(["train", str(cfg), "--run-dir", str(tmp_path / "run"), "--init-from", source])
    assert out.returncode == 0, out.stderr
    assert f"init_from {source}: loaded conv0, conv3, dense7" in out.stderr
    frozen = params(tmp_path / "run/checkpoints/last.h5")["conv0.W"]
    np.testing.assert_array_equal(frozen, params(straight / "checkpoints/last.h5")["conv0.W"])


def test_two_mpi_ranks_write_to_the_store(store, straight, tmp_path, monkeypatch):
    out = staged_run(["train", str(config(tmp_path)), "--run-dir", url("mpi")], tmp_path,
                     monkeypatch, ranks=2)
    assert out.returncode == 0, out.stderr
    assert keys(store.fs(), "mpi") == keys(store.fs(), "straight")
    a = params(straight / "checkpoints/last.h5")
    b = params(fetch(store.fs(), "mpi", tmp_path / "mpi") / "checkpoints/last.h5")
    for k in a:  # the plain step: 2 ranks add in another order (test_mpi_training's bound)
        np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-5, err_msg=k)


def test_unpublished_and_corrupt_objects_are_skipped_like_local_files(store, straight,
                                                                      tmp_path):
    fs, root = store.fs(), f"{BUCKET}/damaged"
    fs.put(str(straight), root, recursive=True)
    good = (straight / "checkpoints/last.h5").read_bytes()
    fs.pipe_file(f"{root}/{TEMP}", good)  # complete, but never published
    fs.pipe_file(f"{root}/checkpoints/last.h5", good[:len(good) // 2])  # truncated
    # the lock of a process of this host that no longer runs: stale, taken over
    fs.pipe_file(f"{root}/distnn.lock", json.dumps(
        {"host": socket.gethostname(), "pid": _dead_pid()}).encode())
    # read as `distnn evaluate` and train.init_from read a URL
    with pytest.raises(CheckpointError, match="an unpublished temporary object"):
        read_checkpoint(url(f"damaged/{TEMP}"))
    with pytest.raises(CheckpointError) as bad:
        read_checkpoint(url("damaged/checkpoints/last.h5"))
    assert str(bad.value).startswith(f"{url('damaged/checkpoints/last.h5')}: not a readable "
                                     f"distnn checkpoint (truncated or corrupt?)")
    out = run(["train", str(config(tmp_path)), "--run-dir", url("damaged"), "--resume", "auto"])
    assert out.returncode == 0, out.stderr
    assert "taking over the stale lock" in out.stderr
    assert "warning: skipped last.h5 (not a readable distnn checkpoint" in out.stderr
    assert f"resuming from {url('damaged/checkpoints/step-000012.h5')}" in out.stderr
    assert "removed 1 temporary object(s) of an interrupted upload" in out.stderr
    assert keys(fs, "damaged") == keys(fs, "straight")  # no .tmp- key, no lock left
    assert fs.cat_file(f"{root}/checkpoints/last.h5") == good  # last.h5 names step 12 again


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_a_missing_s3fs_is_one_line_with_the_install_hint(store, tmp_path):
    code = ("import sys; sys.modules['s3fs'] = None; from distnn.cli import main; "
            "sys.exit(main(sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, "train", str(config(tmp_path)),
                          "--run-dir", url("no-s3fs")], capture_output=True, text=True,
                         env=env(), timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"distnn train [rank 0]: {url('no-s3fs')}: an s3:// location needs the s3 extra: "
        f"pip install 'distnn[s3]'"]
    assert keys(store.fs(), "no-s3fs") == []


def test_a_bucket_that_does_not_exist_is_one_line_naming_the_url(store, tmp_path):
    where = "s3://no-such-bucket/run"
    out = subprocess.run([str(BIN / "distnn"), "train", str(config(tmp_path)), "--run-dir",
                          where], capture_output=True, text=True, env=env(), timeout=120)
    assert out.returncode == 2, out.stderr
    assert out.stderr.strip().splitlines() == [
        f"distnn train [rank 0]: {where}: cannot reach bucket 'no-such-bucket': no such bucket"]
    with pytest.raises(CheckpointError) as err:  # what `distnn evaluate` prints after its name
        read_checkpoint(f"{where}/checkpoints/last.h5")
    assert str(err.value) == (f"{where}/checkpoints/last.h5: cannot reach bucket "
                              f"'no-such-bucket': no such bucket")


@pytest.mark.parametrize("where, message", [
    ("gs://b/run", "gs://b/run: unsupported URL scheme 'gs'; expected a local path or "
                   "s3://BUCKET/PREFIX"),
    ("s3:///run", "s3:///run: no bucket named; expected s3://BUCKET/PREFIX"),
])
def test_a_bad_url_is_refused_naming_it(where, message):
    with pytest.raises(ConfigError) as err:
        parse(where)
    assert str(err.value) == message


def test_a_live_run_holds_the_lock_and_a_second_claim_is_refused(store):
    held = RemoteLock.claim(url("locked"))
    try:
        with pytest.raises(ConfigError, match=rf"run directory {url('locked')} is in use by "
                                              rf"pid {os.getpid()} on "):
            RemoteLock.claim(url("locked"))
    finally:
        held.release()
    assert keys(store.fs(), "locked") == []
    RemoteLock.claim(url("locked")).release()  # free again


def test_a_sync_follows_renames_links_and_deletions_in_order(store, tmp_path):
    """best.h5 rotated to best-2.h5 and a new best.h5, last.h5 linked to a new step file, an
    old step file pruned: each object ends up with the bytes of its local file."""
    loc, fs = connect(url("sync"))
    stage = tmp_path / "stage"
    (stage / "checkpoints").mkdir(parents=True)
    folder = stage / "checkpoints"
    mirror = Mirror(loc, fs, stage)

    def write(name, data):
        (folder / name).write_bytes(data)

    write("best.h5", b"best one")
    write("step-000001.h5", b"step one")
    os.link(folder / "step-000001.h5", folder / "last.h5")
    mirror.sync()
    (folder / "best.h5").replace(folder / "best-2.h5")
    write("best.h5", b"best two")
    write("step-000002.h5", b"step two")
    os.link(folder / "step-000002.h5", folder / ".last.tmp")
    (folder / ".last.tmp").replace(folder / "last.h5")
    (folder / "step-000001.h5").unlink()
    mirror.sync()
    got = {name: fs.cat_file(f"{BUCKET}/sync/{name}") for name in keys(fs, "sync")}
    assert got == {"checkpoints/best.h5": b"best two", "checkpoints/best-2.h5": b"best one",
                   "checkpoints/last.h5": b"step two", "checkpoints/step-000002.h5": b"step two"}
    fresh = Mirror(loc, fs, tmp_path / "fresh")  # a new node's staging: the same files
    fresh.pull()
    assert (tmp_path / "fresh/checkpoints/last.h5").samefile(
        tmp_path / "fresh/checkpoints/step-000002.h5")  # one download, linked as here
    assert (tmp_path / "fresh/checkpoints/best-2.h5").read_bytes() == b"best one"
