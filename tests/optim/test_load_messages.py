"""load_state_dict rejects malformed state (a damaged or foreign checkpoint) with one line naming
where, the key, the value and what was expected, and changes nothing when it does."""

import numpy as np
import pytest

from distnn.optim import (
    BadValue,
    Constant,
    Cosine,
    LinearWarmup,
    ReduceOnPlateau,
    make_optimizer,
)


def momentum_after_steps():
    opt = make_optimizer("momentum", mu=0.9)
    params = np.zeros(3)
    for g in (np.array([1.0, 2.0, 3.0]), np.array([0.5, -0.5, 1.0])):
        opt.step(params, g, 0.1)
    return opt


def snapshot(state):
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}


def unchanged(before, after):
    return before.keys() == after.keys() and all(
        np.array_equal(before[k], after[k]) for k in before)


GOOD_VELOCITY = np.array([0.1, 0.2, 0.3])


@pytest.mark.parametrize("state,message", [
    ([("t", 1)], "momentum.load_state_dict: state list, expected a dict"),
    ({"t": 1, "velocity": GOOD_VELOCITY, "m": GOOD_VELOCITY},
     "momentum.load_state_dict: unknown key 'm'; expected some of t, velocity"),
    ({"velocity": GOOD_VELOCITY}, "momentum.load_state_dict: missing key 't' (the step counter)"),
    ({"t": -1, "velocity": GOOD_VELOCITY},
     "momentum.load_state_dict: t=-1, expected an integer >= 0"),
    ({"t": "3", "velocity": GOOD_VELOCITY},
     "momentum.load_state_dict: t='3', expected an integer >= 0"),
    ({"t": np.int64(-4), "velocity": GOOD_VELOCITY},
     "momentum.load_state_dict: t=-4, expected an integer >= 0"),
    ({"t": 5}, "momentum.load_state_dict: missing key 'velocity' (t=5; only a rule that never "
               "stepped, t=0, may omit its state arrays)"),
    ({"t": 2, "velocity": [0.1, 0.2, 0.3]},
     "momentum.load_state_dict: velocity is list, expected a 1-D float array"),
    ({"t": 2, "velocity": np.array([1, 2, 3])},
     "momentum.load_state_dict: velocity is int64[3], expected a 1-D float array"),
    ({"t": 2, "velocity": np.zeros(4)},
     "momentum.load_state_dict: velocity has shape (4,), expected (3,)"),
])
def test_rule_rejects_malformed_state_naming_it(state, message):
    opt = momentum_after_steps()
    before = snapshot(opt.state_dict())
    with pytest.raises(ValueError) as err:
        opt.load_state_dict(state)
    assert str(err.value) == message
    assert unchanged(before, opt.state_dict())


def test_rule_names_a_negative_sum_of_squares():
    opt = make_optimizer("adagrad")
    with pytest.raises(ValueError) as err:
        opt.load_state_dict({"t": 3, "cache": np.array([0.5, -1.0, 2.0])})
    assert str(err.value) == ("adagrad.load_state_dict: cache has negative entries (min -1.0), "
                              "expected a sum of squares >= 0")
    assert opt.state_dict() == {"t": 0}


def test_rule_names_the_first_missing_buffer_and_mismatched_shapes():
    adam = make_optimizer("adam")
    with pytest.raises(ValueError) as err:
        adam.load_state_dict({"t": 1, "v": np.zeros(2)})
    assert str(err.value) == ("adam.load_state_dict: missing key 'm' (t=1; only a rule that "
                              "never stepped, t=0, may omit its state arrays)")
    with pytest.raises(ValueError) as err:
        adam.load_state_dict({"t": 1, "m": np.zeros(2), "v": np.zeros(3)})
    assert str(err.value) == ("adam.load_state_dict: state arrays have shapes [(2,), (3,)], "
                              "expected one")
    assert adam.state_dict() == {"t": 0}


GOOD_PLATEAU = {"current": 0.5, "best": 1.25, "has_best": 1, "bad": 2, "cooling": 0}


@pytest.mark.parametrize("change,message,key", [
    ({"lr": 0.1},
     "plateau.load_state_dict: unknown key 'lr'; expected some of bad, best, cooling, current, "
     "has_best", "lr"),
    ({"current": 0}, "plateau.load_state_dict: current=0.0, expected a finite number > 0",
     "current"),
    ({"current": "0.5"}, "plateau.load_state_dict: current='0.5', expected a finite number > 0",
     "current"),
    ({"best": float("nan")}, "plateau.load_state_dict: best=nan, expected a finite number",
     "best"),
    # Numbers read back from HDF5 are NumPy scalars; they print as the plain numbers they are.
    ({"best": np.float64("inf")}, "plateau.load_state_dict: best=inf, expected a finite number",
     "best"),
    ({"has_best": "yes"}, "plateau.load_state_dict: has_best='yes', expected an integer >= 0",
     "has_best"),
    ({"has_best": np.int64(-1)}, "plateau.load_state_dict: has_best=-1, expected an integer >= 0",
     "has_best"),
    ({"bad": 1.5}, "plateau.load_state_dict: bad=1.5, expected an integer >= 0", "bad"),
    ({"cooling": -2}, "plateau.load_state_dict: cooling=-2, expected an integer >= 0",
     "cooling"),
])
def test_plateau_rejects_a_bad_value_naming_its_key(change, message, key):
    s = ReduceOnPlateau(base_lr=1.0, factor=0.5, patience=3)
    s.load_state_dict(GOOD_PLATEAU)
    with pytest.raises(BadValue) as err:
        s.load_state_dict({**GOOD_PLATEAU, **change})
    assert str(err.value) == message
    assert err.value.key == key
    assert s.state_dict() == GOOD_PLATEAU


def test_plateau_rejects_has_best_above_one_and_a_non_dict_and_a_missing_key():
    s = ReduceOnPlateau(base_lr=1.0)
    fresh = s.state_dict()
    for state, message in [
        ({**GOOD_PLATEAU, "has_best": 2}, "plateau.load_state_dict: has_best=2, expected 0 or 1"),
        ([1.0, 1.0], "plateau.load_state_dict: state list, expected a dict"),
        ({k: v for k, v in GOOD_PLATEAU.items() if k != "bad"},
         "plateau.load_state_dict: missing key 'bad'; expected current, best, has_best, bad, "
         "cooling"),
    ]:
        with pytest.raises(ValueError) as err:
            s.load_state_dict(state)
        assert str(err.value) == message
        assert s.state_dict() == fresh


def test_a_stateless_schedule_loads_only_an_empty_state():
    c = Constant(base_lr=0.1)
    c.load_state_dict({})
    assert c.state_dict() == {}
    with pytest.raises(ValueError) as err:
        c.load_state_dict({"current": 0.1})
    assert str(err.value) == ("constant.load_state_dict: state {'current': 0.1}, expected {} "
                              "(this schedule keeps no state)")
    with pytest.raises(ValueError) as err:
        Cosine(total_epochs=5).load_state_dict([])
    assert str(err.value) == ("cosine.load_state_dict: state [], expected {} "
                              "(this schedule keeps no state)")


def test_warmup_passes_state_to_its_inner_schedule():
    w = LinearWarmup(ReduceOnPlateau(base_lr=1.0), 2.0)
    w.load_state_dict(GOOD_PLATEAU)
    assert w.state_dict() == GOOD_PLATEAU
    assert w.lr(0, 5.0) == 0.5
    w = LinearWarmup(Constant(base_lr=1.0), 2.0)
    w.load_state_dict({})
    with pytest.raises(ValueError) as err:
        w.load_state_dict({"x": 1})
    assert str(err.value) == ("constant.load_state_dict: state {'x': 1}, expected {} "
                              "(this schedule keeps no state)")
