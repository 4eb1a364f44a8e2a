"""`distnn sweep --backend local` for real: trials are `distnn train` processes on the bundled
mini MNIST; ASHA, the divergence kill, coarse to fine, seeds, resume after SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time

import pytest
import yaml

from distnn.sweep.sample import narrow
from distnn.sweep.spec import load_spec
from tests.sweep.sweeps import BASE, BIN, epoch_lines, final, sweep, write_sweep
from tests.train.runs import mpiexec

ray_hyperband = pytest.importorskip("ray.tune.schedulers.async_hyperband",
                                    reason="Ray Tune not installed (pip install 'distnn[ray]')")


def test_two_stages_asha_and_a_diverging_trial(tmp_path):
    """Stage 0: four trials (one with a learning rate that blows up) under ASHA, one at a time;
    stage 1: two longer trials drawn around stage 0's best two."""
    path = write_sweep(
        tmp_path, seed=10, metric="val_loss",
        space={"schedule.base_lr": {"choice": [0.05, 0.0003, 400.0, 0.01]},
               "train.l2": {"loguniform": [1.0e-6, 1.0e-3]}},
        stages=[{"trials": 4, "epochs": 3}, {"trials": 2, "epochs": 3, "narrow_around_top": 2}],
        early_stop={"divergence": 3.0, "halving": "asha", "reduction_factor": 2})
    out = sweep(path, "--parallel", "1", "--run-dir", "sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sweep_dir = tmp_path / "sw"
    records = final(sweep_dir)
    assert sorted(records) == ["s0-t000", "s0-t001", "s0-t002", "s0-t003", "s1-t000", "s1-t001"]
    stage0 = [records[f"s0-t00{i}"] for i in range(4)]
    lrs = [r["params"]["schedule.base_lr"] for r in stage0]
    # The diverging trial stops itself on its loss (3x the first), before an epoch ends.
    for r in stage0:
        if r["params"]["schedule.base_lr"] == 400.0:
            assert r["status"] == "diverged" and r["metric"] is None and r["epochs"] == 0
            assert "diverged" in r["reason"]
    assert 400.0 in lrs, lrs  # seed 10 draws it (else this test tests less)
    # ASHA, replayed with Ray Tune's own bracket in the order the trials ran (one at a time):
    bracket = ray_hyperband._Bracket(1, 3, 2, 0)
    for r in stage0:
        if r["status"] == "diverged":
            continue
        values = [rec["loss"] for rec in epoch_lines(sweep_dir / r["trial"])]
        expected, credited = "finished", len(values)
        for epoch, value in enumerate(values[:2], 1):  # the last (3rd) epoch's end is no rung
            trial = type("T", (), {"trial_id": r["trial"]})()
            if bracket.on_result(trial, epoch, -value) == "STOP":
                expected, credited = "stopped_asha", epoch
                break
        assert r["status"] == expected, (r, values)
        # A stopped trial is credited with the epochs up to its rung, whatever it ran after.
        assert r["metric"] == min(values[:credited]) and r["epochs"] == credited
    assert any(r["status"] == "stopped_asha" for r in stage0)
    # Stage 1 draws inside the space narrowed around stage 0's best two (stages.jsonl says so).
    spec = load_spec(path)
    top = sorted((r for r in stage0 if r["metric"] is not None), key=lambda r: r["metric"])[:2]
    box = {d.key: d for d in narrow(spec.space, [r["params"] for r in top])}
    notes = [json.loads(line) for line in (sweep_dir / "stages.jsonl").read_text().splitlines()]
    assert notes[1]["around"] == [r["trial"] for r in top]
    for r in (records["s1-t000"], records["s1-t001"]):
        assert r["params"]["schedule.base_lr"] in box["schedule.base_lr"].values
        low, high = box["train.l2"].values
        assert low <= r["params"]["train.l2"] <= high
    # Every trial is an ordinary run directory with its sampled values in its config.
    for r in records.values():
        cfg = yaml.safe_load((sweep_dir / r["trial"] / "config.yaml").read_text())
        assert cfg["schedule"]["base_lr"] == r["params"]["schedule.base_lr"]
        assert cfg["train"]["l2"] == r["params"]["train.l2"]
    best = min((r for r in records.values() if r["metric"] is not None),
               key=lambda r: r["metric"])
    table = out.stdout[out.stdout.index("rank  trial"):].splitlines()
    assert table[1].split()[:3] == ["1", best["trial"], f"{best['metric']:.4f}"]
    drawn = subprocess.run([str(BIN / "distnn"), "sweep", "plot", "sw", "--top", "2"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert drawn.returncode == 0, drawn.stderr
    assert drawn.stdout.split() == [f"sw/plots/{n}" for n in ("search.png",
                                                             "curves.png")]
    ev = subprocess.run([str(BIN / "distnn"), "evaluate", "--json",
                         str(sweep_dir / best["trial"] / "checkpoints" / "best.h5")],
                        capture_output=True, text=True, timeout=120)
    assert ev.returncode == 0, ev.stderr
    assert json.loads(ev.stdout)["split"] == "test"


def _start(path, run_dir, cwd, *extra):
    return subprocess.Popen([str(BIN / "distnn"), "sweep", str(path), "--run-dir", run_dir,
                             *extra], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def test_same_seed_same_trials_and_resume_after_sigterm(tmp_path):
    """One sweep runs through with two trials at a time; the same sweep, one at a time, is
    stopped by SIGTERM mid-trial and resumed: the same trials, to the last bit of every
    metric (the interrupted trial continued from its checkpoint)."""
    path = write_sweep(tmp_path, seed=9, stages=[{"trials": 3, "epochs": 4}])
    whole = sweep(path, "--parallel", "2", "--run-dir", "a", cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr
    proc = _start(path, "b", tmp_path, "--parallel", "1")
    first = tmp_path / "b" / "s0-t000" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (first.exists() and epoch_lines(first.parent)):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 75, err
    assert "--resume" in err.strip().splitlines()[-1]
    cut = final(tmp_path / "b")
    assert cut["s0-t000"]["status"] == "interrupted" and cut["s0-t000"]["epochs"] >= 1
    assert cut["s0-t000"]["epochs"] < 4
    assert (tmp_path / "b" / "s0-t000" / "checkpoints" / "last.h5").exists()
    again = sweep(path, "--parallel", "1", "--run-dir", "b", "--resume", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    a, b = final(tmp_path / "a"), final(tmp_path / "b")
    assert sorted(a) == sorted(b) == ["s0-t000", "s0-t001", "s0-t002"]
    for trial in a:
        assert a[trial]["params"] == b[trial]["params"]
        assert a[trial]["status"] == b[trial]["status"] == "finished"
        assert a[trial]["metric"] == b[trial]["metric"] and a[trial]["epochs"] == 4
        crc = [[rec["params_crc"] for rec in epoch_lines(d / trial)] for d in
               (tmp_path / "a", tmp_path / "b")]
        assert crc[0] == crc[1] and len(crc[0]) == 4
    log = (tmp_path / "b" / "logs" / "s0-t000.log").read_text()
    assert "stopped by signal after a checkpoint" in log and log.count("epoch 0  ") == 2
    # A finished sweep resumed again runs nothing and prints the same table.
    once_more = sweep(path, "--parallel", "1", "--run-dir", "b", "--resume", cwd=tmp_path)
    assert once_more.returncode == 0 and final(tmp_path / "b") == b


def test_bad_input_from_the_command_line(tmp_path):
    path = write_sweep(tmp_path, space={"schedule.base_lr": {"loguniform": [0, 0.1]}})
    out = sweep(path, cwd=tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr == ("distnn sweep: space.schedule.base_lr: loguniform [0.0, 0.1] has a "
                          "bound <= 0; expected 0 < low < high (the search runs on "
                          "log(value))\n")
    good = write_sweep(tmp_path, name="good.yaml")
    (tmp_path / "runs" / "good").mkdir(parents=True)
    (tmp_path / "runs" / "good" / "sweep.yaml").write_text("base: other\n")
    for args, line in [
        ((good, "--parallel", "0"), "distnn sweep: --parallel: 0, expected at least 1"),
        ((good,), "distnn sweep: runs/good already holds a sweep; pass --resume to continue "
                  "it, or choose another --run-dir"),
        ((good, "--resume"), "distnn sweep: runs/good/sweep.yaml differs from the sweep file "
                             "given (base, space, stages, seed, ...); expected the same sweep "
                             "to --resume"),
        ((good, "--trial", "1:0", "--run-dir", "x"), "distnn sweep: --trial '1:0', expected "
                                                      "STAGE:INDEX with a stage below 1 and an "
                                                      "index below that stage's trials"),
        ((good, "--run-dir", "good.yaml"), "distnn sweep: --run-dir good.yaml: cannot write the "
                                           "sweep there: File exists; expected a writable "
                                           "directory"),
    ]:
        out = sweep(*args, cwd=tmp_path)
        assert (out.returncode, out.stderr) == (2, line + "\n"), args
    # A trial whose `distnn train` refuses its config (more folds than samples) ends the sweep
    # with that trial's line, and exit 2, instead of running every other trial into it.
    out = sweep(good, "--folds", "9000", "--run-dir", "folds", "--parallel", "1", cwd=tmp_path)
    assert out.returncode == 2
    assert out.stderr == ("distnn sweep: s0-t000: its `distnn train` refused its config: "
                          "distnn train [rank 0]: data.folds: 9000 folds of the 8000 training "
                          "samples, expected at most 8000 (each fold at least one sample)\n")
    # The pool may have started the next trial before the refusal was read: it is stopped.
    statuses = [r["status"] for r in final(tmp_path / "folds").values()]
    assert statuses[0] == "failed" and set(statuses[1:]) <= {"interrupted"}, statuses


def test_one_driver_per_sweep_directory_and_the_base_config_is_kept(tmp_path):
    import fcntl

    path = write_sweep(tmp_path, stages=[{"trials": 1, "epochs": 1}])
    assert sweep(path, "--run-dir", "sw", cwd=tmp_path).returncode == 0
    with open(tmp_path / "sw" / "sweep.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        out = sweep(path, "--run-dir", "sw", "--resume", cwd=tmp_path)
    assert out.returncode == 2 and re.fullmatch(
        r"distnn sweep: sw: another `distnn sweep` holds its lock \(taken last by pid \d+ on "
        r"\S+\); expected one driver per sweep directory\n", out.stderr), out.stderr
    (tmp_path / "base.yaml").write_text((tmp_path / "base.yaml").read_text()
                                        .replace("global_batch: 256", "global_batch: 128"))
    out = sweep(path, "--run-dir", "sw", "--resume", cwd=tmp_path)
    assert out.returncode == 2 and "differs from the sweep file given" in out.stderr


def test_log_space_metric_is_the_best_epoch(tmp_path):
    """The trial's metric is its best epoch-end value (what best.h5 holds), not the last."""
    path = write_sweep(tmp_path, space={"schedule.base_lr": {"loguniform": [0.02, 0.2]}},
                       stages=[{"trials": 1, "epochs": 3}], early_stop={"divergence": 0})
    out = sweep(path, "--run-dir", "sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    (record,) = final(tmp_path / "sw").values()
    accs = [rec["accuracy"] for rec in epoch_lines(tmp_path / "sw" / "s0-t000")]
    assert record["metric"] == max(accs) and record["epochs"] == 3
    assert 0.02 <= record["params"]["schedule.base_lr"] <= 0.2
    cfg = yaml.safe_load((tmp_path / "sw" / "s0-t000" / "config.yaml").read_text())
    assert cfg["train"]["divergence_factor"] == 3.0  # divergence 0: the base config's rule


def test_cross_validation_folds(tmp_path):
    """--folds 2: each trial is two runs, one per fold; its metric is their mean."""
    path = write_sweep(tmp_path, stages=[{"trials": 2, "epochs": 1}])
    out = sweep(path, "--folds", "2", "--parallel", "2", "--run-dir", "sw", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    for record in final(tmp_path / "sw").values():
        assert record["members"] == [f"{record['trial']}/fold-{i}" for i in (0, 1)]
        accs = []
        for i, member in enumerate(record["members"]):
            (line,) = epoch_lines(tmp_path / "sw" / member)
            assert line["n"] == 4000  # half of mini MNIST's 8000 training images
            cfg = yaml.safe_load((tmp_path / "sw" / member / "config.yaml").read_text())
            assert (cfg["data"]["folds"], cfg["data"]["fold"], cfg["data"]["val_size"]) == \
                (2, i, 0)
            accs.append(line["accuracy"])
        assert record["fold_metrics"] == accs
        assert record["metric"] == pytest.approx(sum(accs) / 2, abs=1e-15)
        assert record["metric_std"] == pytest.approx(abs(accs[0] - accs[1]) / 2, abs=1e-15)
    assert "±" in out.stdout


def test_a_trial_on_two_mpi_ranks(tmp_path):
    """workers_per_trial: 2: the trial is `mpiexec -n 2 distnn train`, and computes what one
    process computes (the invariant step: the same bits)."""
    mpiexec()  # skips without mpi4py / mpiexec
    base = {**BASE, "train": {**BASE["train"], "invariant": True}}
    one = write_sweep(tmp_path / "one", base=base, stages=[{"trials": 1, "epochs": 1}])
    two = write_sweep(tmp_path / "two", base=base, stages=[{"trials": 1, "epochs": 1}],
                      workers_per_trial=2)
    for path in (one, two):
        out = sweep(path, "--run-dir", "sw", cwd=path.parent)
        assert out.returncode == 0, out.stderr
    log = (tmp_path / "two" / "sw" / "logs" / "s0-t000.log").read_text()
    assert "rank 1 of 2" in log
    crcs = [[rec["params_crc"] for rec in epoch_lines(tmp_path / d / "sw" / "s0-t000")]
            for d in ("one", "two")]
    assert crcs[0] == crcs[1] and len(crcs[0]) == 1
