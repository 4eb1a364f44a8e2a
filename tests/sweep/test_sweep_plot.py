"""`distnn sweep plot`: the points, axes and files of a sweep directory written here by hand
(sweep.yaml, trials.jsonl over two stages with a diverged and a running trial, each member's
metrics.jsonl with a mid-epoch validation line to ignore), and every bad input (exit 2, one
line). Real sweeps are tested elsewhere; these are unit tests of the figures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")
from matplotlib.image import imread  # noqa: E402

from distnn.sweep import plot  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SWEEP_YAML = """\
seed: 0
metric: val_accuracy
space:
  schedule.base_lr: {loguniform: [1.0e-4, 1.0e-1]}
  model.4.rate: {uniform: [0.0, 0.6]}
  optimizer.name: {choice: [momentum, adam]}
  train.global_batch: {randint: [32, 256]}
stages: [{trials: 3, epochs: 1}, {trials: 3, epochs: 3, narrow_around_top: 2}]
"""
KEYS = ["schedule.base_lr", "model.4.rate", "optimizer.name", "train.global_batch"]
# trial: (stage, index, params in KEYS order, status, metric, val accuracy per epoch)
TRIALS = {
    "s0-t0": (0, 0, [0.001, 0.1, "momentum", 64], "finished", 0.8, [0.8]),
    "s0-t1": (0, 1, [0.05, 0.5, "adam", 200], "diverged", None, []),
    "s0-t2": (0, 2, [0.0003, 0.3, "adam", 32], "finished", 0.7, [0.7]),
    "s1-t0": (1, 0, [0.0023456, 0.21234, "momentum", 128], "finished", 0.9, [0.8, 0.88, 0.9]),
    "s1-t1": (1, 1, [0.0008, 0.15, "adam", 96], "finished", 0.85, [0.7, 0.85, 0.83]),
    "s1-t2": (1, 2, [0.0005, 0.4, "adam", 48], "running", None, []),
}


def record(trial: str, status: str | None = None) -> dict:
    stage, index, values, final, metric, curve = TRIALS[trial]
    params = dict(zip(KEYS, values, strict=True))
    return {"trial": trial, "stage": stage, "index": index, "params": params,
            "status": status or final, "metric": None if status else metric,
            "epochs": 0 if status else len(curve), "members": [trial]}


def metrics_lines(curve: list[float]) -> list[dict]:
    """Per epoch: a step line, a mid-epoch val line (accuracy 0.01, to be ignored), the train
    line, the epoch-end val line; then layers, warning and test lines."""
    lines: list[dict] = []
    for epoch, acc in enumerate(curve):
        step = 10 * (epoch + 1)
        lines += [{"split": "step", "epoch": epoch, "step": step - 5, "loss": 1.0},
                  {"split": "val", "epoch": epoch, "step": step - 5, "loss": 9.0,
                   "accuracy": 0.01},
                  {"split": "train", "epoch": epoch, "step": step, "loss": 1.0, "accuracy": 0.5},
                  {"split": "val", "epoch": epoch, "step": step, "loss": 1.0 - acc,
                   "accuracy": acc}]
    return lines + [{"split": "layers", "step": 10, "layers": {}},
                    {"split": "warning", "epoch": 0, "step": 10, "accuracy": 0.02},
                    {"split": "test", "loss": 0.1, "accuracy": 0.99}]


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "sweep"
    root.mkdir()
    (root / "sweep.yaml").write_text(SWEEP_YAML)
    lines = [record(t, "running") for t in TRIALS] + [record(t) for t in TRIALS]
    text = "".join(json.dumps(rec) + "\n" for rec in lines)
    (root / "trials.jsonl").write_text(text + '{"trial": "s1-t3", "sta')  # a torn last line
    for trial, (*_, curve) in TRIALS.items():
        (root / trial).mkdir()
        (root / trial / "metrics.jsonl").write_text(
            "".join(json.dumps(line) + "\n" for line in metrics_lines(curve)))
    return root


def loaded(root: Path) -> tuple[dict, dict]:
    return plot.read_sweep(root)


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    plot.add_arguments(parser)
    rc = plot.main(parser.parse_args([str(a) for a in argv]))
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def by_gid(ax, gid: str):
    found = [line for line in ax.get_lines() if line.get_gid() == gid]
    assert len(found) == 1, (gid, [line.get_gid() for line in ax.get_lines()])
    return found[0]


def assert_png(path: Path) -> None:
    assert path.read_bytes().startswith(PNG_SIGNATURE), path
    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


# --- the points ------------------------------------------------------------------------------


def test_search_points(sweep):
    """Points by stage in file order, the diverged trial with None, the running one left out."""
    spec, trials = loaded(sweep)
    assert plot.search_points(spec, trials) == {
        "schedule.base_lr": {0: [(0.001, 0.8), (0.05, None), (0.0003, 0.7)],
                             1: [(0.0023456, 0.9), (0.0008, 0.85)]},
        "model.4.rate": {0: [(0.1, 0.8), (0.5, None), (0.3, 0.7)],
                         1: [(0.21234, 0.9), (0.15, 0.85)]},
        "optimizer.name": {0: [("momentum", 0.8), ("adam", None), ("adam", 0.7)],
                           1: [("momentum", 0.9), ("adam", 0.85)]},
        "train.global_batch": {0: [(64, 0.8), (200, None), (32, 0.7)],
                               1: [(128, 0.9), (96, 0.85)]},
    }


def test_curve_points(sweep):
    """Epoch-end val lines only (mid-epoch, test and warning lines ignored), x = epoch + 1."""
    _, trials = loaded(sweep)
    assert plot.curve_points(sweep, trials["s1-t0"], "val_accuracy") == [
        (1.0, 0.8), (2.0, 0.88), (3.0, 0.9)]
    assert plot.curve_points(sweep, trials["s0-t2"], "val_accuracy") == [(1.0, 0.7)]
    assert plot.curve_points(sweep, trials["s0-t1"], "val_accuracy") == []
    assert plot.curve_points(sweep, trials["s1-t1"], "val_loss") == [  # the loss key
        (1.0, 1.0 - 0.7), (2.0, 1.0 - 0.85), (3.0, 1.0 - 0.83)]
    assert plot.curve_points(sweep, {"members": ["absent"]}, "val_loss") == []


def test_labels():
    assert plot.short_names(["a.lr", "b.lr", "model.4.rate", "optimizer.name"]) == {
        "a.lr": "a.lr", "b.lr": "b.lr", "model.4.rate": "rate", "optimizer.name": "name"}
    names = plot.short_names(KEYS)
    assert plot.curve_label(record("s1-t0"), names) == (
        "s1-t0: base_lr=0.00235, rate=0.212, name=momentum, global_batch=128")


# --- the figures -----------------------------------------------------------------------------


def test_search_figure(sweep):
    spec, trials = loaded(sweep)
    fig = plot.build_search(spec, trials)
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == KEYS
    assert [ax.get_xscale() for ax in panels] == ["log", "linear", "linear", "linear"]
    assert [ax.get_ylabel() for ax in fig.axes[::3]] == ["val_accuracy", "val_accuracy"]
    lr, rate, name, batch = panels
    assert [t.get_text() for t in name.get_xticklabels()] == ["momentum", "adam"]
    assert list(name.get_xticks()) == [0, 1]
    for ax, bad in ((lr, 0.05), (rate, 0.5), (name, 1), (batch, 200)):
        assert by_gid(ax, "stage0").get_color() == "C0"
        assert by_gid(ax, "stage1").get_color() == "C1"
        assert len(by_gid(ax, "stage0").get_xdata()) == 2
        assert len(by_gid(ax, "stage1").get_xdata()) == 2
        cross = by_gid(ax, "stage0:no metric")
        assert (cross.get_marker(), cross.get_color()) == ("x", "C0")
        assert list(cross.get_xdata()) == [bad] and list(cross.get_ydata()) == [0.0]
        assert cross.get_transform() == ax.get_xaxis_transform()  # y on the bottom edge
        assert list(by_gid(ax, "best").get_ydata()) == [0.9]
        assert [line.get_gid() for line in ax.get_lines()].count("stage1:no metric") == 0
    assert list(by_gid(name, "stage0").get_xdata()) == [0, 1]  # momentum, adam
    assert list(by_gid(name, "stage0").get_ydata()) == [0.8, 0.7]
    assert list(by_gid(lr, "best").get_xdata()) == [0.0023456]
    assert list(by_gid(name, "best").get_xdata()) == [0]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "stage 0 (1 epoch)", "stage 1 (3 epochs)", "no metric (diverged, failed)",
        "best: s1-t0 (0.9)"]


def test_curves_figure(sweep):
    spec, trials = loaded(sweep)
    ax = plot.build_curves(sweep, spec, trials, top=2).axes[0]
    assert [line.get_gid() for line in ax.get_lines()] == ["s1-t0", "s1-t1"]
    best = by_gid(ax, "s1-t0")
    assert (list(best.get_xdata()), list(best.get_ydata())) == ([1, 2, 3], [0.8, 0.88, 0.9])
    assert best.get_label().startswith("s1-t0: base_lr=0.00235, rate=0.212")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("epochs completed", "val_accuracy")
    assert ax.get_title() == "the 2 best trials by val_accuracy"
    every = plot.build_curves(sweep, spec, trials, top=5).axes[0]
    assert [line.get_gid() for line in every.get_lines()] == ["s1-t0", "s1-t1", "s0-t0",
                                                               "s0-t2"]
    assert every.get_title() == "the 4 best trials by val_accuracy"  # only 4 have a metric


def test_a_choice_not_listed(sweep):
    """A value outside sweep.yaml's choices (an edited file) gets its own tick after them."""
    (sweep / "sweep.yaml").write_text(SWEEP_YAML.replace("[momentum, adam]", "[adam, sgd]"))
    spec, trials = loaded(sweep)
    name = plot.build_search(spec, trials).axes[2]
    assert [t.get_text() for t in name.get_xticklabels()] == ["adam", "sgd", "momentum"]
    assert list(by_gid(name, "stage1").get_xdata()) == [2, 0]


def test_val_loss_ranks_lower_first(sweep):
    (sweep / "sweep.yaml").write_text(SWEEP_YAML.replace("val_accuracy", "val_loss"))
    spec, trials = loaded(sweep)
    fig = plot.build_search(spec, trials)
    assert fig.axes[0].get_ylabel() == "val_loss"
    assert fig.legends[0].get_texts()[-1].get_text() == "best: s0-t2 (0.7)"
    ax = plot.build_curves(sweep, spec, trials, top=1).axes[0]
    assert [line.get_gid() for line in ax.get_lines()] == ["s0-t2"]
    assert list(ax.get_lines()[0].get_ydata()) == pytest.approx([0.3])


# --- the command -----------------------------------------------------------------------------


def test_writes_the_pngs(sweep, capsys):
    rc, out, err = run_cli(capsys, sweep)
    plots = sweep / "plots"
    assert (rc, err) == (0, "")
    assert out == f"{plots / 'search.png'}\n{plots / 'curves.png'}\n"
    for name in ("search.png", "curves.png"):
        assert_png(plots / name)
    assert sorted(p.name for p in plots.iterdir()) == ["curves.png", "search.png"]


def test_arguments_as_strings(sweep, tmp_path, capsys):
    """`distnn sweep` hands SWEEP_DIR and --out on as strings."""
    args = argparse.Namespace(sweep_dir=str(sweep), top=5, out=str(tmp_path / "o"))
    assert plot.main(args) == 0
    assert capsys.readouterr().out.splitlines() == [str(tmp_path / "o" / "search.png"),
                                                    str(tmp_path / "o" / "curves.png")]


def test_out_and_top(sweep, tmp_path, capsys):
    rc, out, err = run_cli(capsys, sweep, "--top", "1", "--out", tmp_path / "figs")
    assert (rc, err) == (0, "")
    assert out.splitlines() == [str(tmp_path / "figs" / n) for n in ("search.png", "curves.png")]
    assert_png(tmp_path / "figs" / "curves.png")
    assert not (sweep / "plots").exists()


def test_bad_input(sweep, tmp_path, capsys):
    prog = "distnn sweep plot"
    rc, out, err = run_cli(capsys, tmp_path / "nope")
    assert (rc, out, err) == (2, "", f"{prog}: {tmp_path / 'nope'}: no such sweep directory\n")

    (sweep / "trials.jsonl").rename(tmp_path / "trials.jsonl")
    rc, out, err = run_cli(capsys, sweep)
    assert (rc, out, err) == (2, "", f"{prog}: {sweep}: no trials.jsonl (no trial has "
                                     f"started)\n")

    (sweep / "sweep.yaml").unlink()
    rc, out, err = run_cli(capsys, sweep)
    assert (rc, out, err) == (2, "", f"{prog}: {sweep}: no sweep.yaml (not a sweep "
                                     f"directory)\n")
    assert not (sweep / "plots").exists()


def test_no_trial_with_a_metric(sweep, capsys):
    lines = [record(t, "running") for t in TRIALS] + [record("s0-t1")]
    (sweep / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    rc, out, err = run_cli(capsys, sweep)
    assert (rc, out) == (2, "")
    assert err == f"distnn sweep plot: {sweep}: no trial has a val_accuracy yet (6 trials in " \
                  f"trials.jsonl)\n"


@pytest.mark.parametrize(("text", "why"), [
    ("metric: accuracy\nspace: {a: {uniform: [0, 1]}}\n",
     "metric: 'accuracy', expected one of val_loss, val_accuracy"),
    ("metric: val_loss\nspace: {a: [0, 1]}\n",
     "space.a: [0, 1], expected one distribution, e.g. {uniform: [0.0, 1.0]}"),
])
def test_bad_sweep_yaml(sweep, capsys, text, why):
    (sweep / "sweep.yaml").write_text(text)
    rc, out, err = run_cli(capsys, sweep)
    assert (rc, out, err) == (2, "", f"distnn sweep plot: {sweep / 'sweep.yaml'}: {why}\n")


def test_top_must_be_positive(sweep, capsys):
    rc, out, err = run_cli(capsys, sweep, "--top", "0")
    assert (rc, out, err) == (2, "", "distnn sweep plot: --top 0: expected at least 1\n")


def test_without_matplotlib(sweep, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises
    rc, out, err = run_cli(capsys, sweep)
    assert (rc, out) == (2, "")
    assert err == "distnn sweep plot: needs matplotlib: pip install 'distnn[plot]'\n"
    assert not (sweep / "plots").exists()
