"""A stop request at any point of a run (setup, the final checkpoint, the test evaluation)
ends it with 75, and the resume completes exactly what was left. The signals are real
(os.kill of this process), sent at a chosen point by wrapping the function running there."""

import os
import signal

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.config import load_config
from distnn.exit_codes import ExitCode
from distnn.train import keeper as keeper_module
from distnn.train import run as run_module
from distnn.train.run import train
from tests.train.runs import metrics, params, write_config


def config(tmp_path):
    return load_config(str(write_config(tmp_path / "c.yaml",
                                        train={"epochs": 2, "max_steps": 30})))


def signal_during(monkeypatch, module, name, sig=signal.SIGUSR1, when=lambda *a, **k: True):
    """Make `module.name` send `sig` to this process (once, when `when(args)`) and go on."""
    real = getattr(module, name)
    sent = []

    def wrapper(*args, **kwargs):
        if not sent and when(*args, **kwargs):
            sent.append(True)
            os.kill(os.getpid(), sig)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapper)
    return sent


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("straight")
    result = train(config(tmp), create_communicator("local"), tmp / "run")
    assert result.exit_code == ExitCode.OK
    return result, tmp / "run"


def stop_then_resume(cfg, run_dir):
    comm = create_communicator("local")
    first = train(cfg, comm, run_dir)
    assert first.exit_code == ExitCode.RESUMABLE and first.test is None
    logged = metrics(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    assert not [m for m in logged if m["split"] == "test"]
    second = train(cfg, comm, run_dir, run_dir / "checkpoints" / "last.h5")
    assert second.exit_code == ExitCode.OK
    return second


def same_as_straight(straight, result, run_dir):
    ref, ref_dir = straight
    assert np.array_equal(result.model.params, ref.model.params)
    assert result.test == ref.test
    a, b = params(ref_dir / "checkpoints/last.h5"), params(run_dir / "checkpoints/last.h5")
    assert all(np.array_equal(a[k], b[k]) for k in a)
    tests = [m for m in metrics(run_dir) if m["split"] == "test"]
    assert len(tests) == 1 and tests[0]["accuracy"] == ref.test["accuracy"]


@pytest.mark.parametrize("sig", [signal.SIGUSR1, signal.SIGTERM])
def test_stop_during_setup(tmp_path, monkeypatch, straight, sig):
    sent = signal_during(monkeypatch, run_module, "build_parts", sig)
    result = stop_then_resume(config(tmp_path), tmp_path / "run")
    assert sent
    same_as_straight(straight, result, tmp_path / "run")


def test_stop_during_the_test_evaluation(tmp_path, monkeypatch, straight):
    sent = signal_during(monkeypatch, run_module, "evaluate")
    result = stop_then_resume(config(tmp_path), tmp_path / "run")
    assert sent
    same_as_straight(straight, result, tmp_path / "run")


def test_stop_during_the_final_checkpoint(tmp_path, monkeypatch, straight):
    cfg = config(tmp_path)
    final = cfg.train.max_steps
    sent = signal_during(monkeypatch, keeper_module.CheckpointKeeper, "write_now",
                         when=lambda self, state, kind: kind == "last" and state.step == final)
    result = stop_then_resume(cfg, tmp_path / "run")
    assert sent
    same_as_straight(straight, result, tmp_path / "run")


def test_handlers_are_given_back_after_a_run_in_this_process(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    train(config(tmp_path), create_communicator("local"), tmp_path / "run")
    assert signal.getsignal(signal.SIGUSR1) is before
