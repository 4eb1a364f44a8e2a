"""`optimizer.name: lbfgs` in real runs: a linear softmax classifier on mini MNIST reaches the
optimum scipy.optimize's L-BFGS-B finds on the same data (an independent float64 objective);
under `mpiexec -n 2` a small net trains to one process's bits (train.invariant) or to its
numbers up to rounding (plain); a run stopped mid-way resumes to the uninterrupted bits; noisy
configs are refused."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import yaml

from distnn.config import ConfigError, from_dict
from distnn.train.setup import load_splits
from tests.train.runs import env, metrics, mpiexec, params, run, write_config

LINEAR = [{"type": "flatten"}, {"type": "dense", "units": 10}]
MLP = [{"type": "conv", "filters": 4, "kernel": 3, "pad": 1}, {"type": "relu"},
       {"type": "maxpool", "size": 4}, {"type": "flatten"},
       {"type": "dense", "units": 16}, {"type": "tanh"}, {"type": "dense", "units": 10}]


def lbfgs_config(path, model=LINEAR, **train):
    write_config(path, model=model, data={"dataset": "mini_mnist", "val_size": 100,
                                          "train_size": 1000, "normalize": False},
                 train={"global_batch": 256, "consistency_every": 0, **train})
    raw = yaml.safe_load(path.read_text())
    raw["optimizer"] = {"name": "lbfgs"}
    raw["checkpoint"] = {"every_epochs": 0}  # an iteration is an epoch: last.h5 at the end
    path.write_text(yaml.safe_dump(raw))
    return path


def test_a_linear_classifier_reaches_scipys_optimum(tmp_path):
    from scipy import optimize as scipy_optimize  # the test extra installs scipy
    cfg = lbfgs_config(tmp_path / "c.yaml", epochs=300, l2=0.05)
    done = run(["train", str(cfg), "--run-dir", str(tmp_path / "run")])
    assert done.returncode == 0, done.stderr
    lines = metrics(tmp_path / "run")
    converged = [m for m in lines if m["split"] == "lbfgs"]
    assert converged and converged[0]["converged"], lines[-3:]
    final = [m for m in lines if m["split"] == "train"][-1]
    got = params(tmp_path / "run" / "checkpoints" / "last.h5")

    train = load_splits(from_dict(yaml.safe_load(cfg.read_text()))).train
    x = train.read(np.arange(len(train))).reshape(len(train), -1) / 255.0
    y = np.asarray(train.labels, np.int64)
    onehot = np.eye(10)[y]

    def objective(v):  # mean cross-entropy + 0.5 l2 |W|^2 (the bias is not decayed)
        w, b = v[:-10].reshape(x.shape[1], 10), v[-10:]
        z = x @ w + b
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        f = -np.mean(np.log(p[np.arange(len(y)), y])) + 0.025 * np.sum(w * w)
        dz = (p - onehot) / len(y)
        return f, np.concatenate([(x.T @ dz + 0.05 * w).ravel(), dz.sum(axis=0)])

    best = scipy_optimize.minimize(objective, np.zeros(x.shape[1] * 10 + 10), jac=True,
                                   method="L-BFGS-B", options={"gtol": 1e-9, "ftol": 1e-15,
                                                               "maxiter": 2000})
    assert abs(final["loss"] - best.fun) < 1e-5 * best.fun, (final["loss"], best.fun)
    w_star = best.x[:-10].reshape(-1, 10)
    w = got["dense1.W"].reshape(w_star.shape)
    assert np.linalg.norm(w - w_star) < 1e-2 * np.linalg.norm(w_star)
    ours = objective(np.concatenate([w.ravel(), got["dense1.b"]]).astype(np.float64))[0]
    assert abs(ours - best.fun) < 1e-5 * best.fun  # scored by the independent objective


def final_params(run_dir):
    return params(run_dir / "checkpoints" / "last.h5")


@pytest.mark.parametrize("invariant", [True, pytest.param(False, marks=pytest.mark.slow)])
def test_two_ranks_train_to_one_process(tmp_path, invariant):
    mpiexec()
    cfg = lbfgs_config(tmp_path / "c.yaml", model=MLP, epochs=4, l2=0.001, l1=0.0001,
                       invariant=invariant, groups=4, consistency_every=1)  # replica CRCs
    one = run(["train", str(cfg), "--run-dir", str(tmp_path / "one")])
    two = run(["train", str(cfg), "--run-dir", str(tmp_path / "two")], ranks=2)
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    a, b = final_params(tmp_path / "one"), final_params(tmp_path / "two")
    for key in a:
        if invariant:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        else:
            np.testing.assert_allclose(a[key], b[key], rtol=1e-3, atol=1e-5, err_msg=key)
    losses = [m["loss"] for m in metrics(tmp_path / "one") if m["split"] == "train"]
    assert all(b < a for a, b in zip(losses, losses[1:], strict=False)), losses


STOP_AT = """
import os, signal, sys
sys.argv = ["distnn", *sys.argv[2:]]
AT = int(os.environ["STOP_AT"])
from distnn.cli import main
from distnn.train import full_batch
run_epoch = full_batch.FullBatchCoordinator.run_epoch
def patched(coord, flag):
    if coord.state.step == AT and coord.comm.rank == 0:
        signal.raise_signal(signal.SIGTERM)
    return run_epoch(coord, flag)
full_batch.FullBatchCoordinator.run_epoch = patched
sys.exit(main(sys.argv[1:]))
"""


def test_a_run_stopped_between_iterations_resumes_to_the_same_bits(tmp_path):
    cfg = lbfgs_config(tmp_path / "c.yaml", model=MLP, epochs=5, l2=0.001)
    whole = run(["train", str(cfg), "--run-dir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    script = tmp_path / "stop.py"
    script.write_text(STOP_AT)
    stopped = subprocess.run([sys.executable, str(script), "x", "train", str(cfg),
                              "--run-dir", str(tmp_path / "cut")], capture_output=True,
                             text=True, timeout=300, env={**env(), "STOP_AT": "2"})
    assert stopped.returncode == 75, stopped.stderr
    resumed = run(["train", str(cfg), "--run-dir", str(tmp_path / "cut"), "--resume", "auto"])
    assert resumed.returncode == 0, resumed.stderr
    a, b = final_params(tmp_path / "whole"), final_params(tmp_path / "cut")
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    train = [m["loss"] for m in metrics(tmp_path / "cut") if m["split"] == "train"]
    assert train == [m["loss"] for m in metrics(tmp_path / "whole") if m["split"] == "train"]


@pytest.mark.parametrize("change,match", [
    ({"model": [{"type": "flatten"}, {"type": "dropout", "rate": 0.5},
                {"type": "dense", "units": 10}]},
     r"model: dropout layer 'dropout1' \(rate 0.5\) with optimizer lbfgs; expected no dropout"),
    ({"model": [{"type": "flatten"}, {"type": "batchnorm"}, {"type": "dense", "units": 10}]},
     r"model: batchnorm layer 'batchnorm1' with optimizer lbfgs"),
    ({"data": {"augment": True}}, r"data.augment: True with optimizer lbfgs; expected false"),
    ({"schedule": {"name": "cosine"}}, r"schedule.name: 'cosine' with optimizer lbfgs"),
    ({"comm": {"compress": "bf16"}}, r"comm.compress: 'bf16' with optimizer lbfgs"),
    ({"optimizer": {"name": "lbfgs", "c1": 0.95}},
     r"optimizer.c1: 0.95 >= c2 0.9, expected c1 < c2"),
])
def test_noisy_or_inconsistent_configs_are_refused(change, match):
    raw = {"model": LINEAR, "optimizer": {"name": "lbfgs"}, **change}
    with pytest.raises(ConfigError, match=match):
        from_dict(raw)
