"""`distnn evaluate --ensemble RUN_DIR ...` and `--ensemble-top K SWEEP_DIR` on real runs: the
ensemble's numbers against a NumPy computation of the mean of the members' probabilities, one
member against plain `distnn evaluate`, the sweep's K best trials, the bad inputs, and the same
numbers on 2 MPI ranks."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml

from distnn.cli import main
from distnn.data import get_dataset, to_float
from distnn.nn import Sequential
from distnn.nn import threads as nn_threads
from distnn.train.checkpoint import load_checkpoint, save_checkpoint
from tests.train.runs import mpiexec, run

RUNS = {"a": (1, 0.1), "b": (2, 0.05), "c": (3, 0.15)}  # run: (seed, base_lr)
BLOCK = 256  # evaluate.py's blocks: the test scores the same batches, so the same float32 scores


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Three short quickstart runs on mini MNIST that differ in seed and learning rate."""
    tmp = tmp_path_factory.mktemp("ensemble")
    out = {}
    for tag, (seed, lr) in RUNS.items():
        rd = tmp / tag
        done = run(["train", "quickstart", "--run-dir", str(rd), "--set", "train.epochs=1",
                    "--set", "train.max_steps=25", "--set", f"seed={seed}",
                    "--set", f"schedule.base_lr={lr}"], timeout=300)
        assert done.returncode == 0, done.stderr
        out[tag] = rd
    return out


def probabilities(checkpoint: Path) -> tuple[np.ndarray, np.ndarray]:
    """(softmax probabilities (n, 10) float64, labels (n,)) of a checkpoint's model on mini
    MNIST's test split, from the file alone: its config's model, its parameters, its
    normalisation."""
    snap = load_checkpoint(checkpoint)
    spec = yaml.safe_load(snap.config_yaml)["model"]
    data = get_dataset("mini_mnist", "test")
    model = Sequential(spec, data.image_shape, dtype=np.float32)
    model.load_state_dict(snap.model)
    probs = []
    with nn_threads.limit(1):
        for start in range(0, len(data), BLOCK):
            idx = np.arange(start, min(start + BLOCK, len(data)))
            s = model.forward(to_float(data.read(idx), snap.normalization), False)
            s = s.astype(np.float64)
            e = np.exp(s - s.max(axis=1, keepdims=True))
            probs.append(e / e.sum(axis=1, keepdims=True))
    return np.concatenate(probs), data.labels


def expected(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(accuracy, mean -log p[true class]) of probabilities (n, K)."""
    p_true = np.maximum(probs[np.arange(len(labels)), labels], 1e-300)
    return float(np.mean(probs.argmax(axis=1) == labels)), float(-np.log(p_true).mean())


def evaluate_json(*args: str, ranks: int | None = None) -> dict:
    out = run(["evaluate", *args, "--json"], ranks=ranks, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def best(rd: Path) -> Path:
    return rd / "checkpoints" / "best.h5"


@pytest.fixture(scope="module")
def three(runs) -> dict:
    """`distnn evaluate --ensemble a b c --json` in one process."""
    return evaluate_json("--ensemble", *(str(rd) for rd in runs.values()))


def test_the_ensemble_is_the_mean_of_the_members_probabilities(runs, three):
    got = three
    each = [probabilities(best(rd)) for rd in runs.values()]
    labels = each[0][1]
    mean = np.mean([p for p, _ in each], axis=0)
    accuracy, loss = expected(mean, labels)
    assert (got["dataset"], got["split"], got["n"]) == ("mini_mnist", "test", len(labels))
    assert got["ensemble"]["accuracy"] == accuracy
    assert got["ensemble"]["loss"] == pytest.approx(loss, rel=1e-12)
    assert [m["path"] for m in got["members"]] == [str(best(rd)) for rd in runs.values()]
    for member, (p, _) in zip(got["members"], each, strict=True):
        acc, nll = expected(p, labels)
        assert member["accuracy"] == acc and member["loss"] == pytest.approx(nll, rel=1e-12)
    # the members differ, and averaging them beats the best of them here
    accuracies = [m["accuracy"] for m in got["members"]]
    assert len(set(accuracies)) == len(accuracies)
    assert got["ensemble"]["accuracy"] > max(accuracies)


def test_an_ensemble_of_one_is_plain_evaluate(runs):
    rd = runs["a"]
    plain = evaluate_json(str(best(rd)))
    one = evaluate_json("--ensemble", str(rd))
    assert one["n"] == plain["n"] == 2000
    for got in (one["ensemble"], one["members"][0]):
        assert abs(got["accuracy"] - plain["accuracy"]) <= 1e-12
        assert abs(got["loss"] - plain["loss"]) <= 1e-12


def write_sweep(sweep: Path, runs: dict[str, Path], metric: str) -> Path:
    """A sweep directory: sweep.yaml naming `metric`, and trials.jsonl whose members are the
    real run directories (relative to the sweep directory)."""
    sweep.mkdir()
    (sweep / "sweep.yaml").write_text(f"name: s\nmetric: {metric}\ntrials: 4\n")
    rel = {tag: os.path.relpath(rd, sweep) for tag, rd in runs.items()}

    def line(index, status, value, members):
        return json.dumps({"trial": f"s0-t{index}", "stage": 0, "index": index,
                           "params": {}, "status": status, "metric": value,
                           "members": members})

    lines = [
        line(0, "finished", 0.9, [rel["a"]]),
        line(1, "running", None, [rel["b"], rel["c"]]),  # superseded by its newer line below
        line(2, "failed", None, ["missing-run"]),  # no metric: never picked
        line(3, "finished", 0.6, [rel["c"]]),
        line(1, "finished", 0.4, [rel["b"], rel["c"]]),  # two folds' runs
    ]
    (sweep / "trials.jsonl").write_text("\n".join(lines) + "\n")
    return sweep


def test_ensemble_top_takes_the_best_trials_members(tmp_path, runs):
    sweep = write_sweep(tmp_path / "sweep", runs, "val_loss")
    got = evaluate_json("--ensemble-top", "2", str(sweep))
    # val_loss: lower is better: s0-t1 (0.4: runs b and c), then s0-t3 (0.6: run c)
    want = [best(runs["b"]), best(runs["c"]), best(runs["c"])]
    assert [Path(m["path"]).resolve() for m in got["members"]] == [p.resolve() for p in want]
    direct = evaluate_json("--ensemble", *(str(p) for p in want))
    assert got["ensemble"] == direct["ensemble"] and got["n"] == direct["n"]


def test_ensemble_top_by_accuracy_in_text(tmp_path, runs):
    sweep = write_sweep(tmp_path / "sweep", runs, "val_accuracy")
    out = run(["evaluate", "--ensemble-top", "2", str(sweep)], timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    # val_accuracy: higher is better: s0-t0 (0.9: run a), then s0-t3 (0.6: run c)
    assert len(lines) == 3
    for line, tag in zip(lines[:2], ("a", "c"), strict=True):
        words = line.split()
        assert words[0] == "member" and Path(words[1]).resolve() == best(runs[tag]).resolve()
        assert words[2] == "accuracy" and words[4] == "loss" and len(words) == 6
    words = lines[2].split()
    assert words[:4] == ["ensemble", "of", "2:", "test"] and words[-2:] == ["n", "2000"]


def with_units(src: Path, dst: Path, units: int) -> Path:
    """A copy of checkpoint `src` whose saved config ends in a dense layer of `units`."""
    snap = load_checkpoint(src)
    cfg = yaml.safe_load(snap.config_yaml)
    cfg["model"][-1]["units"] = units
    save_checkpoint(dataclasses.replace(snap, config_yaml=yaml.safe_dump(cfg)), dst)
    return dst


FORMS = ("expected exactly one of: a CHECKPOINT file; --ensemble RUN_DIR [RUN_DIR ...]; "
         "--ensemble-top K SWEEP_DIR")


@pytest.mark.parametrize("case", [
    "checkpoint and --ensemble", "neither", "--ensemble and --ensemble-top", "missing run dir",
    "run dir without best.h5", "K larger than the trials", "K not a number", "no sweep dir",
    "no sweep.yaml", "another number of classes"])
def test_bad_ensemble_input(tmp_path, runs, capsys, case):
    a, b = str(runs["a"]), str(runs["b"])
    sweep = write_sweep(tmp_path / "sweep", runs, "val_loss")
    (tmp_path / "empty-run").mkdir()
    (tmp_path / "not-a-sweep").mkdir()
    five = with_units(best(runs["b"]), tmp_path / "five.h5", 5)
    args, message = {
        "checkpoint and --ensemble": ([str(best(runs["a"])), "--ensemble", b],
                                      f"a checkpoint and --ensemble given; {FORMS}"),
        "neither": ([], f"nothing given; {FORMS}"),
        "--ensemble and --ensemble-top": (["--ensemble", a, "--ensemble-top", "1", str(sweep)],
                                          f"--ensemble and --ensemble-top given; {FORMS}"),
        "missing run dir": (["--ensemble", a, str(tmp_path / "absent")],
                            f"{tmp_path / 'absent'}: no such run directory or checkpoint file; "
                            f"expected a run directory with checkpoints/best.h5, or a .h5 "
                            f"checkpoint file"),
        "run dir without best.h5": (["--ensemble", str(tmp_path / "empty-run")],
                                    f"{tmp_path / 'empty-run'}: no checkpoints/best.h5 in this "
                                    f"run directory; expected a run directory with "
                                    f"checkpoints/best.h5, or a .h5 checkpoint file"),
        "K larger than the trials": (["--ensemble-top", "4", str(sweep)],
                                     f"{sweep}: --ensemble-top 4 but only 3 trial(s) have a "
                                     f"val_loss; expected K <= 3"),
        "K not a number": (["--ensemble-top", "two", str(sweep)],
                           "--ensemble-top 'two': expected a number of trials >= 1"),
        "no sweep dir": (["--ensemble-top", "2"],
                         "--ensemble-top 2: no SWEEP_DIR given; expected --ensemble-top K "
                         "SWEEP_DIR"),
        "no sweep.yaml": (["--ensemble-top", "2", str(tmp_path / "not-a-sweep")],
                          f"{tmp_path / 'not-a-sweep' / 'sweep.yaml'}: cannot read: No such "
                          f"file or directory; expected a sweep directory (its sweep.yaml and "
                          f"trials.jsonl)"),
        # a .h5 path is taken as is (not <path>/checkpoints/best.h5): its model is loaded
        "another number of classes": (["--ensemble", a, str(five)],
                                       f"{five}: its model does not fit mini_mnist [test]: "
                                       f"model: the last layer outputs (5,) per image, expected "
                                       f"(10,)"),
    }[case]
    capsys.readouterr()
    code = main(["evaluate", *args])
    out, err = capsys.readouterr()
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith(f"distnn evaluate: {message}"), err


def test_the_same_numbers_on_two_mpi_ranks(runs, three):
    mpiexec()
    two = evaluate_json("--ensemble", *(str(rd) for rd in runs.values()), ranks=2)
    assert two == three


def test_a_row_of_nan_probabilities_is_never_right():
    from distnn.train.ensemble import block_sums, softmax64

    probs = softmax64(np.array([[np.nan, 1.0, 2.0], [3.0, 1.0, 2.0]], dtype=np.float32))
    loss, correct = block_sums(probs, np.array([0, 0]))
    assert correct == 1 and np.isnan(loss)
