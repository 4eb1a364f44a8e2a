"""LR schedules: values at chosen points, warmup composition, the factory's errors, scaling."""

import math

import pytest

from distnn.optim import (
    SCHEDULES,
    Constant,
    Cosine,
    Exponential,
    InverseTime,
    LinearWarmup,
    ReduceOnPlateau,
    StepDecay,
    make_schedule,
    scaled_lr,
)


def lr(cfg, epoch, step=0):
    return make_schedule(cfg).lr(step, epoch)


STEP = {"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 10}
COS = {"name": "cosine", "base_lr": 0.1, "total_epochs": 10, "min_lr": 0.01}


@pytest.mark.parametrize("cfg,epoch,expect", [
    ({"name": "constant", "base_lr": 0.1}, 0, 0.1),
    ({"name": "constant", "base_lr": 0.1}, 123.4, 0.1),
    (STEP, 0, 0.1), (STEP, 9.99, 0.1), (STEP, 10, 0.05), (STEP, 25.5, 0.025),
    (dict(STEP, every=0.1), 0.3, 0.1 * 0.5 ** 3),  # 0.3 / 0.1 is 2.9999999999999996 in floats
    ({"name": "exponential", "base_lr": 0.1, "gamma": 0.9}, 0, 0.1),
    ({"name": "exponential", "base_lr": 0.1, "gamma": 0.9}, 2, 0.081),
    ({"name": "exponential", "base_lr": 0.1, "gamma": 0.81}, 0.5, 0.09),  # fractional epoch
    ({"name": "inverse_time", "base_lr": 0.1, "k": 0.5}, 0, 0.1),
    ({"name": "inverse_time", "base_lr": 0.1, "k": 0.5}, 2, 0.05),  # t = 1/k halves it
    ({"name": "inverse_time", "base_lr": 0.1, "k": 0.5}, 0.5, 0.08),
    (COS, 0, 0.1), (COS, 5, 0.055), (COS, 10, 0.01), (COS, 12, 0.01),
    (COS, 2.5, 0.01 + 0.09 * (1 + math.cos(math.pi / 4)) / 2),
    ({"name": "cosine", "base_lr": 1.0, "total_epochs": 4}, 2, 0.5),
])
def test_values(cfg, epoch, expect):
    assert lr(cfg, epoch) == pytest.approx(expect, rel=1e-12)


def test_schedules_are_pure_and_ignore_step_and_metrics():
    for cfg in (STEP, COS, {"name": "exponential", "base_lr": 1, "gamma": 0.5},
                dict(STEP, warmup_epochs=3)):
        s = make_schedule(cfg)
        forward = [s.lr(i, i / 7) for i in range(100)]
        backward = [s.lr(i, i / 7, {"val_loss": 1.0}) for i in reversed(range(100))]
        assert forward == backward[::-1]
        assert s.lr(0, 4.0) == s.lr(999, 4.0)
        assert s.state_dict() == {}


def test_classes_directly():
    assert StepDecay(base_lr=1.0, drop=0.1, every=2).lr(0, 4) == pytest.approx(0.01)
    assert Exponential(base_lr=2.0, gamma=0.5).lr(0, 3) == 0.25
    assert InverseTime(base_lr=1.0, k=1.0).lr(0, 3) == 0.25
    assert Cosine(base_lr=1.0, total_epochs=2).lr(0, 1) == pytest.approx(0.5)
    assert Constant(base_lr=0.3).lr(5, 5) == 0.3
    assert Constant().base_lr == 0.05  # the declared default


WARM = {"name": "step", "base_lr": 0.1, "drop": 0.5, "every": 1, "warmup_epochs": 2,
        "warmup_start_factor": 0.0}


@pytest.mark.parametrize("epoch,expect", [
    (0, 0.0),
    (0.5, 0.25 * 0.1),  # a quarter of the way; inner is still 0.1
    (1.5, 0.75 * 0.05),  # inner has dropped once: the factor scales inner's value there
    (2, 0.025), (3, 0.0125),  # inner's own values from the end of warmup on
])
def test_warmup_multiplies_inner_by_a_linear_factor(epoch, expect):
    assert lr(WARM, epoch) == pytest.approx(expect, rel=1e-12, abs=1e-15)


def test_warmup_on_a_constant_is_a_straight_line():
    s = make_schedule({"name": "constant", "base_lr": 0.4, "warmup_epochs": 4,
                       "warmup_start_factor": 0.25})
    points = [s.lr(0, e) for e in (0, 1, 2, 3, 4, 5)]
    assert points == pytest.approx([0.1, 0.175, 0.25, 0.325, 0.4, 0.4])
    assert isinstance(s, LinearWarmup)


def test_warmup_is_continuous_at_its_end_for_every_schedule():
    for name, extra in [("step", {"every": 3}), ("exponential", {}), ("inverse_time", {}),
                        ("cosine", {"total_epochs": 10}), ("constant", {})]:
        cfg = {"name": name, "base_lr": 0.2, "warmup_epochs": 1.5, **extra}
        s, inner = make_schedule(cfg), make_schedule({k: v for k, v in cfg.items()
                                                      if k != "warmup_epochs"})
        assert s.lr(0, 1.5 - 1e-9) == pytest.approx(inner.lr(0, 1.5), rel=1e-6), name
        assert s.lr(0, 0) == pytest.approx(0.1 * inner.lr(0, 0)), name  # default start 0.1


def test_warmup_passes_plateau_updates_and_state_through():
    cfg = {"name": "plateau", "base_lr": 1.0, "factor": 0.5, "patience": 0,
           "warmup_epochs": 2, "warmup_start_factor": 0.5}
    s = make_schedule(cfg)
    s.update(1.0)
    s.update(2.0)  # worse, patience 0: reduce to 0.5
    assert s.lr(0, 1) == pytest.approx(0.5 * 0.75) and s.lr(0, 2) == 0.5
    t = make_schedule(cfg)
    t.load_state_dict(s.state_dict())
    assert t.lr(0, 5) == 0.5 and isinstance(t.inner, ReduceOnPlateau)


def test_warmup_composes_with_a_bare_object():
    class Half:
        def lr(self, step, epoch, metrics=None):
            return 0.5

    s = LinearWarmup(Half(), warmup_epochs=1, start_factor=0)
    assert s.lr(0, 0.5) == 0.25 and s.state_dict() == {}
    s.update(1.0)
    with pytest.raises(ValueError, match="inner schedule keeps no state"):
        s.load_state_dict({"x": 1})


def test_zero_warmup_means_none():
    assert isinstance(make_schedule(dict(STEP, warmup_epochs=0)), StepDecay)


def test_linear_scaling_rule():
    assert scaled_lr(0.1, 256) == pytest.approx(0.1)
    assert scaled_lr(0.1, 1024) == pytest.approx(0.4)
    assert scaled_lr(0.1, 64, reference_batch=32) == pytest.approx(0.2)
    with pytest.raises(ValueError, match="global_batch=0"):
        scaled_lr(0.1, 0)
    with pytest.raises(ValueError, match="reference_batch=2.5"):
        scaled_lr(0.1, 64, 2.5)
    with pytest.raises(ValueError, match="base_lr=-0.1"):
        scaled_lr(-0.1, 64)


@pytest.mark.parametrize("cfg,match", [
    ({"name": "warm", "base_lr": 0.1},
     "schedule 'warm' is unknown; expected one of constant, step, exponential, inverse_time, "
     "cosine, plateau"),
    ({"base_lr": 0.1}, "missing key 'name'"),
    ({"name": "cosine", "base_lr": 0.1}, "cosine: missing key 'total_epochs'"),
    (dict(STEP, gamma=0.9), "schedule step: unknown key 'gamma'; expected some of base_lr, "
                            "drop, every"),
    ({"name": "constant", "base_lr": -1}, "base_lr=-1"),
    ({"name": "constant", "base_lr": 0}, "base_lr=0"),
    (dict(STEP, drop=0), "drop=0"),
    (dict(STEP, drop=1.5), "drop=1.5"),
    (dict(STEP, every=0), "every=0"),
    ({"name": "exponential", "base_lr": 0.1, "gamma": 1.01}, "gamma=1.01"),
    ({"name": "inverse_time", "base_lr": 0.1, "k": -1}, "k=-1"),
    ({"name": "cosine", "base_lr": 0.1, "total_epochs": 0}, "total_epochs=0"),
    (dict(COS, min_lr=0.2), r"cosine: min_lr=0.2, expected a number in \[0, 0.1\]"),
    (dict(STEP, warmup_epochs=-1), "schedule step: warmup_epochs=-1"),
    (dict(STEP, warmup_epochs=1, warmup_start_factor=1.5), "warmup_start_factor=1.5"),
    ({"name": "plateau", "base_lr": 0.1, "mode": "up"}, "mode='up', expected one of min, max"),
    ({"name": "plateau", "base_lr": 0.1, "factor": 1}, "factor=1"),
    ({"name": "plateau", "base_lr": 0.1, "patience": 1.5}, "patience=1.5"),
    ({"name": "plateau", "base_lr": 0.1, "cooldown": -1}, "cooldown=-1"),
    ({"name": "plateau", "base_lr": 0.1, "min_delta": -1}, "min_delta=-1"),
    ("step", "expected a dict"),
])
def test_factory_errors_name_the_key(cfg, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(cfg)


def test_every_schedule_is_reachable_and_epochs_must_not_be_negative():
    assert list(SCHEDULES) == ["constant", "step", "exponential", "inverse_time", "cosine",
                               "plateau"]
    with pytest.raises(ValueError, match="epoch=-1"):
        lr(STEP, -1)
    with pytest.raises(ValueError, match="epoch=nan"):
        lr(dict(STEP, warmup_epochs=1), float("nan"))
    with pytest.raises(ValueError, match="expected {}"):
        make_schedule(STEP).load_state_dict({"current": 1.0})
