"""The sweep file: every bad input one line naming it; draws in log space, seeded; narrowing."""

from __future__ import annotations

import math

import numpy as np
import pytest

from distnn.sweep.sample import MIN_WIDTH, PAD, draw, narrow
from distnn.sweep.spec import Dimension, SweepError, load_spec, parse_spec, trial_config
from tests.sweep.sweeps import BASE, write_sweep

GOOD = {"base": "quickstart", "space": {"schedule.base_lr": {"loguniform": [1e-4, 1e-1]}},
        "stages": [{"trials": 4, "epochs": 1}, {"trials": 2, "epochs": 3,
                                                 "narrow_around_top": 2}]}


def spec_of(tmp_path, **changes):
    raw = {**GOOD, **changes}
    return parse_spec(raw, tmp_path)


@pytest.mark.parametrize("changes, message", [
    ({"space": {"train.nope": {"uniform": [0, 1]}}},
     "space.train.nope: train.nope: not a config key; expected a section key such as train.l2, "
     "schedule.base_lr or model.<layer>.<key>"),
    ({"space": {"optimizer.nope": {"uniform": [0, 1]}}}, "space.optimizer.nope: optimizer"),
    ({"space": {"model.99.rate": {"uniform": [0, 1]}}}, "space.model.99.rate: model.99: no such "
     "layer; expected an index below 10 or one of the names conv0, relu1"),
    ({"space": {"train.l2": {"uniform": [0.5, 0.5]}}},
     "space.train.l2: uniform [0.5, 0.5] is an empty or inverted range; expected low < high"),
    ({"space": {"train.l2": {"uniform": [0.5, 0.1]}}},
     "space.train.l2: uniform [0.5, 0.1] is an empty or inverted range; expected low < high"),
    ({"space": {"train.l2": {"loguniform": [0, 0.1]}}},
     "space.train.l2: loguniform [0.0, 0.1] has a bound <= 0; expected 0 < low < high"),
    ({"space": {"train.l2": {"loguniform": [-1, 0.1]}}},
     "space.train.l2: loguniform [-1.0, 0.1] has a bound <= 0"),
    ({"space": {"train.l2": {"normal": [0, 1]}}}, "space.train.l2: {'normal': [0, 1]}, expected "
     "one of {loguniform: [...]}, {uniform: [...]}, {randint: [...]}, {choice: [...]}"),
    ({"space": {"train.l2": {"uniform": [0, 1, 2]}}}, "expected [low, high]"),
    ({"space": {"optimizer.name": {"choice": ["adam", "adam"]}}}, "repeats a value"),
    ({"space": {"optimizer.name": {"choice": ["adam", "lbfgsx"]}}},
     "space.optimizer.name: optimizer.name: 'lbfgsx' is not one of"),
    ({"space": {}}, "space: {}, expected a mapping of config keys to distributions"),
    ({"stages": [{"trials": 2, "epochs": 1}, {"trials": 3, "epochs": 2}]},
     "stages[1].trials: 3, more than the 2 trials stage 0 produces; expected at most 2"),
    ({"stages": [{"trials": 2, "epochs": 1}, {"trials": 2, "epochs": 2,
                                              "narrow_around_top": 3}]},
     "stages[1].narrow_around_top: 3, more than the 2 trials stage 0 produces; expected at "
     "most 2"),
    ({"stages": [{"trials": 2, "epochs": 1, "narrow_around_top": 1}]},
     "stages[0].narrow_around_top: 1, expected 0 in the first stage"),
    ({"stages": [{"trials": 0, "epochs": 1}]}, "stages[0].trials: 0, expected an integer >= 1"),
    ({"stages": [{"trials": 2, "epoch": 1}]}, "stages[0]: unknown key(s) epoch; expected"),
    ({"trials": 5}, "trials: 5, but the stages run 6; expected their sum"),
    ({"metric": "test_accuracy"}, "metric: 'test_accuracy', expected one of val_accuracy, "
     "val_loss"),
    ({"early_stop": {"halving": "hyperband"}}, "early_stop.halving: 'hyperband', expected one "
     "of none, asha"),
    ({"early_stop": {"reduction_factor": 1}}, "early_stop.reduction_factor: 1.0, expected a "
     "number > 1"),
    ({"early_stop": {"halving": "asha"}, "folds": 3}, "early_stop.halving: asha with folds: 3; "
     "expected one of them"),
    ({"folds": 1}, "folds: 1, expected 0 (no cross-validation) or at least 2"),
    ({"base": "no_such_config"}, "base: 'no_such_config' is neither a config file"),
    ({"early_stop": {"divergence": 0.5}}, "early_stop.divergence: 0.5, expected 0 (the base "
     "config's rule) or a factor > 1 of the first loss"),
    ({"space": {"train.epochs": {"randint": [1, 4]}}}, "space.train.epochs: the sweep sets this "
     "key itself (a stage's epochs); expected another key"),
    ({"space": {"data.fold": {"randint": [0, 1]}}, "folds": 2}, "space.data.fold: the sweep sets "
     "this key itself (folds)"),
    ({"space": {"early_stopping.monitor": {"choice": ["val_loss"]}}},
     "space.early_stopping.monitor: the sweep sets this key itself (the sweep's metric)"),
    ({"seeds": 3}, "unknown key(s) seeds; expected some of base, early_stop, folds, metric, "
     "seed, space, stages, trials, workers_per_trial"),
])
def test_bad_sweep_file_is_one_line_naming_it(tmp_path, changes, message):
    with pytest.raises(SweepError) as info:
        spec_of(tmp_path, **changes)
    text = str(info.value)
    assert message in text and "\n" not in text


def test_missing_file_and_base_beside_the_sweep_file(tmp_path, monkeypatch):
    with pytest.raises(SweepError, match="no such file; expected a SWEEP.yaml"):
        load_spec(tmp_path / "nope.yaml")
    (tmp_path / "base.yaml").write_text("name: not_this_one\n")  # in the working directory
    monkeypatch.chdir(tmp_path)
    spec = load_spec(write_sweep(tmp_path / "sub"))  # base: base.yaml, beside the file
    assert spec.base == str((tmp_path / "sub" / "base.yaml").resolve())
    assert spec.base_raw == BASE and spec.to_dict()["base_config"] == BASE


def test_values_that_clash_are_refused_naming_the_trial(tmp_path):
    """Each value alone builds a config; together they may not (adam takes no mu)."""
    from distnn.sweep.plan import check, draws

    spec = spec_of(tmp_path, space={"optimizer.name": {"choice": ["momentum", "adam"]},
                                    "optimizer.mu": {"uniform": [0.5, 0.9]}})
    plans = draws(spec, spec.space, 0)
    first = next(p for p in plans if p.params["optimizer.name"] == "adam")
    with pytest.raises(SweepError) as info:
        check(spec, plans)
    assert str(info.value).startswith(f"{first.trial} {first.params}: optimizer")
    assert "adam does not take mu" in str(info.value)


def test_a_trial_keeps_the_best_checkpoint_of_the_sweeps_metric(tmp_path):
    for metric, mode in (("val_accuracy", "max"), ("val_loss", "min")):
        cfg = trial_config(spec_of(tmp_path, metric=metric), {"schedule.base_lr": 0.01}, 0)
        assert (cfg.early_stopping.monitor, cfg.early_stopping.mode) == (metric, mode)


def test_layers_by_index_or_name_and_what_a_trial_config_holds(tmp_path):
    spec = spec_of(tmp_path, space={"model.dense7.units": {"randint": [32, 64]},
                                    "model.0.filters": {"choice": [8, 16]},
                                    "optimizer.name": {"choice": ["momentum", "adam"]}},
                   early_stop={"divergence": 2.5})
    cfg = trial_config(spec, {"model.dense7.units": 40, "model.0.filters": 8,
                              "optimizer.name": "adam"}, stage=1, threads=2)
    assert cfg.model[7]["units"] == 40 and cfg.model[0]["filters"] == 8
    assert cfg.optimizer.name == "adam" and "mu" not in cfg.optimizer.params
    assert cfg.train.epochs == 3 and cfg.train.threads == 2
    assert cfg.train.divergence_factor == 2.5 and cfg.train.on_divergence == "stop"


def test_draws_are_seeded_per_trial_and_uniform_in_log_space():
    space = (Dimension("lr", "loguniform", (1e-4, 1e-1)), Dimension("p", "uniform", (0.0, 0.6)),
             Dimension("n", "randint", (2, 4)), Dimension("o", "choice", ("a", "b")))
    assert draw(space, 7, 0, 3) == draw(space, 7, 0, 3)
    assert draw(space, 7, 0, 3) != draw(space, 8, 0, 3) != draw(space, 7, 1, 3)
    draws = [draw(space, 0, 0, i) for i in range(4000)]
    logs = np.log10([d["lr"] for d in draws])
    # log10 uniform on [-4, -1]: each decade holds a third of the draws (binomial sd 0.0075).
    for low in (-4, -3, -2):
        assert abs(np.mean((logs >= low) & (logs < low + 1)) - 1 / 3) < 0.03
    assert all(0 <= d["p"] <= 0.6 for d in draws)
    assert {d["n"] for d in draws} == {2, 3, 4} and {d["o"] for d in draws} == {"a", "b"}


def test_narrowing_around_the_top_trials():
    space = (Dimension("lr", "loguniform", (1e-4, 1e-1)), Dimension("p", "uniform", (0.0, 0.6)),
             Dimension("n", "randint", (1, 100)), Dimension("o", "choice", ("a", "b", "c")))
    top = [{"lr": 1e-3, "p": 0.2, "n": 10, "o": "c"}, {"lr": 1e-2, "p": 0.3, "n": 20, "o": "a"}]
    lr, p, n, o = narrow(space, top)
    span = math.log(1e-2) - math.log(1e-3)
    assert lr.values == pytest.approx((math.exp(math.log(1e-3) - PAD * span),
                                       math.exp(math.log(1e-2) + PAD * span)))
    assert p.values == pytest.approx((0.2 - PAD * 0.1, 0.3 + PAD * 0.1))
    assert n.values == (7, 23)  # 10 - 2.5 and 20 + 2.5, rounded outward
    assert o.values == ("a", "c")  # the old order
    # Agreeing trials: MIN_WIDTH of the old range; a range never leaves the old one.
    one = narrow(space, [{"lr": 1e-4, "p": 0.6, "n": 100, "o": "b"}])
    width = MIN_WIDTH * (math.log(1e-1) - math.log(1e-4))
    assert one[0].values == pytest.approx((1e-4, math.exp(math.log(1e-4) + width)))
    assert one[1].values == pytest.approx((0.6 - MIN_WIDTH * 0.6, 0.6))
    assert one[2].values == (95, 100) and one[3].values == ("b",)


@pytest.mark.parametrize("name", ["quickstart.yaml", "fashion_mnist.yaml",
                                  "fashion_mnist_fine.yaml"])
def test_the_example_sweeps_load(name):
    from pathlib import Path

    spec = load_spec(Path(__file__).resolve().parents[2] / "sweeps" / name)
    assert spec.trials == sum(s.trials for s in spec.stages) >= 4
