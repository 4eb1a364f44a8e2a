"""ReduceOnPlateau: patience, cooldown, min_delta, mode, min_lr and its state round trip."""

import json

import pytest

from distnn.optim import ReduceOnPlateau, make_schedule


def plateau(**kw):
    cfg = {"name": "plateau", "base_lr": 1.0, "factor": 0.5, "patience": 2, "mode": "min"}
    return make_schedule({**cfg, **kw})


def rates(s, values):
    """The rate after each validation."""
    out = []
    for v in values:
        s.update(v)
        out.append(s.lr(0, 0.0))
    return out


def test_reduces_after_more_than_patience_bad_validations():
    # best, then 3 bad: patience 2 allows two, the third reduces (as EarlyStopping counts).
    assert rates(plateau(), [1.0, 1.0, 1.1, 1.0, 1.0]) == [1, 1, 1, 0.5, 0.5]


def test_improvement_resets_the_count():
    assert rates(plateau(), [1.0, 2.0, 2.0, 0.9, 2.0, 2.0, 2.0]) == [1, 1, 1, 1, 1, 1, 0.5]


def test_cooldown_ignores_validations_after_a_reduction():
    s = plateau(patience=0, cooldown=2)
    # 1.0 best; 1.0 bad -> 0.5; two ignored; then each bad one reduces again (patience 0).
    assert rates(s, [1.0, 1.0, 1.0, 1.0, 1.0]) == [1, 0.5, 0.5, 0.5, 0.25]
    assert s.cooling == 2


def test_min_delta_and_max_mode():
    s = plateau(patience=0, min_delta=0.1)
    assert rates(s, [1.0, 0.95]) == [1, 0.5]  # better, but not by more than min_delta
    s = plateau(patience=0, mode="max")
    assert rates(s, [0.5, 0.6, 0.7, 0.65]) == [1, 1, 1, 0.5]


def test_never_below_min_lr():
    s = plateau(patience=0, min_lr=0.3)
    assert rates(s, [1.0, 1.0, 1.0, 1.0]) == [1, 0.5, 0.3, 0.3]


def test_non_finite_values_never_improve():
    s = plateau(patience=0)
    assert rates(s, [float("nan"), 1.0, float("inf")]) == [0.5, 0.5, 0.25]
    assert s.best == 1.0


def test_lr_ignores_step_and_epoch():
    s = plateau()
    assert s.lr(0, 0) == s.lr(10**6, 99.5) == 1.0


def test_state_round_trip_through_json_continues_identically():
    values = [1.0, 0.8, 0.9, 0.85, 0.9, 0.95, 0.7, 0.75, 0.8, 0.9, 0.91, 0.92]
    a = plateau(cooldown=1)
    rates(a, values[:5])
    state = a.state_dict()
    assert set(state) == {"current", "best", "has_best", "bad", "cooling"}
    assert all(type(v) in (int, float) for v in state.values())
    b = plateau(cooldown=1)
    b.load_state_dict(json.loads(json.dumps(state, allow_nan=False)))
    assert rates(a, values[5:]) == rates(b, values[5:])
    assert a.state_dict() == b.state_dict()


def test_fresh_state_is_plain_numbers():
    state = plateau().state_dict()
    assert state == {"current": 1.0, "best": 0.0, "has_best": 0, "bad": 0, "cooling": 0}
    json.dumps(state, allow_nan=False)


GOOD = {"current": 0.5, "best": 1.0, "has_best": 1, "bad": 0, "cooling": 0}


@pytest.mark.parametrize("change,match", [
    ({"extra": 1}, "unknown key 'extra'"),
    ({"current": None}, "current=None"),
    ({"current": 0.0}, "current=0.0"),
    ({"best": float("nan")}, "best=nan"),
    ({"has_best": 2}, "has_best=2, expected 0 or 1"),
    ({"bad": -1}, "bad=-1"),
    ({"cooling": 0.5}, "cooling=0.5"),
])
def test_load_rejects_bad_state_and_changes_nothing(change, match):
    s = plateau()
    s.load_state_dict(GOOD)
    with pytest.raises(ValueError, match=match):
        s.load_state_dict({**GOOD, **change})
    assert s.state_dict() == GOOD


def test_load_requires_every_key_and_a_dict():
    s = plateau()
    with pytest.raises(ValueError, match="missing key 'cooling'"):
        s.load_state_dict({k: v for k, v in GOOD.items() if k != "cooling"})
    with pytest.raises(ValueError, match="expected a dict"):
        s.load_state_dict([1, 2])
    with pytest.raises(ValueError, match="value='1.0', expected a number"):
        s.update("1.0")


def test_defaults_by_constructor():
    s = ReduceOnPlateau(base_lr=0.1)
    assert (s.factor, s.patience, s.mode, s.cooldown, s.min_lr) == (0.1, 5, "min", 0, 0.0)
