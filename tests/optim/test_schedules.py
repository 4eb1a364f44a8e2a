"""LR schedules: values at chosen points, warmup composition, plateau state."""

import math

import pytest

from distnn.optim import make_schedule, scaled_lr


def lr(spec, epoch, step=0):
    return make_schedule(spec).lr(step, epoch)


def test_values():
    assert lr({"name": "constant", "base_lr": 0.1}, 7) == 0.1
    assert lr({"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 10}, 9.99) == 0.1
    assert lr({"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 10}, 20) == pytest.approx(0.025)
    assert lr({"name": "exponential", "base_lr": 0.1, "gamma": 0.9}, 2) == pytest.approx(0.081)
    assert lr({"name": "inverse_time", "base_lr": 0.1, "k": 0.5}, 2) == pytest.approx(0.05)
    cos = {"name": "cosine", "base_lr": 0.1, "total_epochs": 10, "min_lr": 0.01}
    assert lr(cos, 0) == pytest.approx(0.1) and lr(cos, 10) == pytest.approx(0.01)
    assert lr(cos, 5) == pytest.approx(0.055) and lr(cos, 12) == pytest.approx(0.01)


def test_warmup_composes():
    spec = {"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 1, "warmup_epochs": 2,
            "warmup_start_factor": 0.0}
    assert lr(spec, 0) == 0.0
    assert lr(spec, 0.5) == pytest.approx(0.25 * 0.1)  # a quarter of the way, inner still 0.1
    assert lr(spec, 1.5) == pytest.approx(0.75 * 0.05)
    assert lr(spec, 2) == pytest.approx(0.025)  # inner's own value after warmup


def test_plateau_patience_cooldown_and_state():
    s = make_schedule({"name": "plateau", "base_lr": 1.0, "factor": 0.5, "patience": 1,
                       "cooldown": 1, "mode": "min"})
    for value in (1.0, 1.0, 1.0):  # best, bad 1, bad 2 > patience -> reduce
        s.update(value)
    assert s.lr(0, 0) == 0.5
    s.update(1.0)  # cooling down: no count
    assert s.lr(0, 0) == 0.5
    t = make_schedule({"name": "plateau", "base_lr": 1.0, "factor": 0.5, "patience": 1,
                       "cooldown": 1, "mode": "min"})
    t.load_state_dict(s.state_dict())
    for sched in (s, t):
        sched.update(1.0)
        sched.update(1.0)
    assert s.lr(0, 0) == t.lr(0, 0) == 0.25
    s.update(0.1)
    assert s.state_dict()["best"] == 0.1


def test_linear_scaling_rule_and_errors():
    assert scaled_lr(0.1, 1024, 256) == pytest.approx(0.4)
    with pytest.raises(ValueError, match="'warm' is unknown"):
        make_schedule({"name": "warm", "base_lr": 0.1})
    with pytest.raises(ValueError, match="base_lr=-1"):
        make_schedule({"name": "constant", "base_lr": -1})
    with pytest.raises(ValueError, match="total_epochs"):
        make_schedule({"name": "cosine", "base_lr": 0.1, "total_epochs": 0})
    assert math.isfinite(lr({"name": "inverse_time", "base_lr": 1, "k": 0}, 100))
