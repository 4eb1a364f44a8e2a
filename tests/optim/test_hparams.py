"""The declarations: each rule and schedule lists its hyper-parameters once, and the
constructors, the factories and the config read that one list."""

import numpy as np
import pytest

from distnn import optim
from distnn.optim import REQUIRED, BadValue, HParam, hparams_of, resolve_for


@pytest.mark.parametrize("kind,name", [("optimizer", n) for n in optim.RULES]
                         + [("schedule", n) for n in optim.SCHEDULES])
def test_declared_defaults_build_and_become_attributes(kind, name):
    given = {p.key: 1.0 for p in hparams_of(kind, name) if p.default is REQUIRED}
    params = resolve_for(kind, name, given)
    assert list(params) == [p.key for p in hparams_of(kind, name)]
    built = optim.make_optimizer(name, **params) if kind == "optimizer" else optim.make_schedule(
        {"name": name, **params, "warmup_epochs": 0})
    for p in hparams_of(kind, name):
        if not p.key.startswith("warmup"):
            assert getattr(built, p.key) == params[p.key], p.key
            assert not hasattr(type(built), p.key), f"{p.key} would hide a class attribute"


def test_who_takes_what():
    assert optim.takers("optimizer", "mu") == ["momentum", "nesterov"]
    assert optim.takers("optimizer", "nothing") == []
    assert optim.foreign("optimizer", "adam", ["mu", "eps", "typo"]) == ["mu"]
    assert [p.key for p in hparams_of("schedule", "step")] == [
        "base_lr", "drop", "every", "warmup_epochs", "warmup_start_factor"]
    with pytest.raises(ValueError, match="schedule 'warm' is unknown"):
        hparams_of("schedule", "warm")


@pytest.mark.parametrize("kind,name,given,key,detail", [
    ("optimizer", "adam", {"mu": 0.9}, "mu",
     "adam does not take mu (taken by momentum, nesterov); adam takes beta1, beta2, eps"),
    ("optimizer", "sgd", {"mu": 0.9}, "mu",
     "sgd does not take mu (taken by momentum, nesterov); sgd takes nothing"),
    ("optimizer", "adam", {"typo": 1}, "typo", "unknown key; expected some of beta1, beta2, eps"),
    ("optimizer", "momentum", {"mu": 1.5}, "mu", "1.5 must be in [0, 1)"),
    ("optimizer", "momentum", {"mu": "x"}, "mu", "'x' is not a number"),
    ("schedule", "plateau", {"patience": -1}, "patience", "-1 must be >= 0"),
    ("schedule", "plateau", {"mode": "up"}, "mode", "'up' is not one of min, max"),
    ("schedule", "cosine", {}, "total_epochs", "missing, and cosine has no default for it"),
])
def test_bad_values_carry_the_key_and_a_detail(kind, name, given, key, detail):
    with pytest.raises(BadValue) as info:
        resolve_for(kind, name, given)
    assert (info.value.key, info.value.detail) == (key, detail)


def test_hparam_checks_by_kind():
    assert HParam("n", 1, integer=True, low=1).check("x", 3) == 3
    assert HParam("f", 0.5, low=0.0, high=1.0).check("x", 1) == 1.0
    assert isinstance(HParam("f", 0.5).check("x", 1), float)
    with pytest.raises(ValueError, match=r"x: n=0, expected an integer >= 1"):
        HParam("n", 1, integer=True, low=1).check("x", 0)
    with pytest.raises(ValueError, match="x: f=inf, expected a finite number"):
        HParam("f").check("x", float("inf"))


def test_the_decay_mask_goes_only_to_rules_that_decay_weights():
    mask = np.array([1.0, 0.0, 1.0])
    assert np.array_equal(optim.make_optimizer("adamw", decay_mask=mask).decay_mask, mask)
    assert not hasattr(optim.make_optimizer("momentum", decay_mask=mask), "decay_mask")
