"""Update-rule state loaded into a rule in every situation the trainer meets: after it has
stepped (a rollback), before its first step (a resume), twice before stepping, in another dtype,
and a reset (t=0) state. Loading copies what it is given and keeps the rule's own buffers."""

import numpy as np
import pytest

from distnn.optim import make_optimizer

STATEFUL = {
    "momentum": {"mu": 0.9},
    "nesterov": {"mu": 0.8},
    "adagrad": {"eps": 1e-8},
    "rmsprop": {"decay_rate": 0.9, "eps": 1e-8},
    "adam": {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8},
    "adamw": {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1},
}
BUFFERS = {"momentum": ("velocity",), "nesterov": ("velocity",), "adagrad": ("cache",),
           "rmsprop": ("cache",), "adam": ("m", "v"), "adamw": ("m", "v")}


def gradients(n, size=5, dtype=np.float64):
    rng = np.random.default_rng(7)
    return [rng.standard_normal(size).astype(dtype) for _ in range(n)]


def run(opt, params, grads, lr=0.05):
    for g in grads:
        opt.step(params, g, lr)


@pytest.mark.parametrize("name", sorted(STATEFUL))
def test_rollback_into_a_rule_that_has_stepped_replays_bit_exact(name):
    """The divergence rollback: a rule that kept stepping goes back to an earlier snapshot."""
    grads = gradients(6)
    opt = make_optimizer(name, **STATEFUL[name])
    params = np.linspace(-1.0, 1.0, 5)
    run(opt, params, grads[:3])
    snap, at_snap = opt.state_dict(), params.copy()
    run(opt, params, grads[3:])
    first_pass = params.copy()

    opt.load_state_dict(snap)
    assert opt.t == 3
    for key in BUFFERS[name]:
        assert np.array_equal(opt.state_dict()[key], snap[key]), key
    params = at_snap.copy()
    run(opt, params, grads[3:])
    assert np.array_equal(params, first_pass)


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_state_loaded_into_a_stepping_rule_keeps_the_rules_dtype(name):
    """A float64 state (an HDF5 file from a float64 run) loaded into a rule stepping float32
    buffers is stored in those float32 buffers, and the next steps are those of the
    float32-rounded state."""
    grads = gradients(4, dtype=np.float32)
    x0 = np.linspace(-1.0, 1.0, 5, dtype=np.float32)
    wide = {"t": 2, **{k: np.linspace(0.1, 0.5, 5) for k in BUFFERS[name]}}
    narrow = {"t": 2, **{k: v.astype(np.float32) for k, v in wide.items() if k != "t"}}

    a = make_optimizer(name, **STATEFUL[name])
    pa = x0.copy()
    run(a, pa, grads[:1])
    a.load_state_dict(wide)
    for key in BUFFERS[name]:
        assert a.state_dict()[key].dtype == np.float32, key
    b = make_optimizer(name, **STATEFUL[name])
    pb = x0.copy()
    run(b, pb, grads[:1])
    b.load_state_dict(narrow)
    run(a, pa, grads[1:])
    run(b, pb, grads[1:])
    assert pa.dtype == np.float32
    assert np.array_equal(pa, pb)


def test_state_loaded_twice_before_the_first_step_is_replaced_not_merged():
    """Loaded state not yet used is replaced whole by the next load, even of another size."""
    opt = make_optimizer("momentum", mu=0.5)
    opt.load_state_dict({"t": 1, "velocity": np.zeros(3)})
    opt.load_state_dict({"t": 4, "velocity": np.array([1.0, 2.0, 3.0, 4.0, 5.0])})
    assert opt.t == 4
    assert np.array_equal(opt.state_dict()["velocity"], [1.0, 2.0, 3.0, 4.0, 5.0])
    params = np.zeros(5)
    opt.step(params, np.full(5, 2.0), 0.5)
    # v = 0.5 v - 0.5 * 2 = [-0.5, 0, 0.5, 1, 1.5]; x += v
    assert np.array_equal(params, [-0.5, 0.0, 0.5, 1.0, 1.5])
    assert opt.t == 5


@pytest.mark.parametrize("name", ["momentum", "adagrad", "adam"])
def test_loading_copies_the_arrays_it_is_given(name):
    """The caller's dict (say, a checkpoint read once and loaded into several rules) is never
    written by the rule's later steps, and two rules loaded from it stay independent."""
    given = {"t": 2, **{k: np.array([0.25, 0.5, 1.0]) for k in BUFFERS[name]}}
    kept = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in given.items()}
    a = make_optimizer(name, **STATEFUL[name])
    b = make_optimizer(name, **STATEFUL[name])
    a.load_state_dict(given)
    b.load_state_dict(given)
    pa, pb = np.ones(3), np.ones(3)
    run(a, pa, gradients(2, size=3))
    for key in BUFFERS[name]:
        assert np.array_equal(given[key], kept[key]), key
    run(b, pb, gradients(2, size=3))
    assert np.array_equal(pa, pb)


def test_a_reset_state_with_zero_arrays_round_trips():
    """Loading {"t": 0} into a rule that has stepped zeroes its buffers; that rule's
    state_dict (t=0 with zero arrays) loads as such into another rule."""
    used = make_optimizer("momentum", mu=0.9)
    run(used, np.ones(4), gradients(2, size=4))
    used.load_state_dict({"t": 0})
    reset = used.state_dict()
    assert reset["t"] == 0
    assert np.array_equal(reset["velocity"], np.zeros(4))
    other = make_optimizer("momentum", mu=0.9)
    other.load_state_dict(reset)
    state = other.state_dict()
    assert sorted(state) == ["t", "velocity"]
    assert state["t"] == 0
    assert np.array_equal(state["velocity"], np.zeros(4))


def test_state_arrays_given_with_t_zero_are_loaded():
    opt = make_optimizer("momentum", mu=0.5)
    opt.load_state_dict({"t": 0, "velocity": np.array([2.0, -2.0])})
    assert np.array_equal(opt.state_dict()["velocity"], [2.0, -2.0])
    params = np.zeros(2)
    opt.step(params, np.zeros(2), 0.1)  # v = 0.5 v
    assert np.array_equal(params, [1.0, -1.0])


def test_state_arrays_given_with_t_zero_are_still_checked():
    opt = make_optimizer("momentum")
    with pytest.raises(ValueError) as err:
        opt.load_state_dict({"t": 0, "velocity": np.zeros((2, 2))})
    assert str(err.value) == ("momentum.load_state_dict: velocity is float64[2, 2], "
                              "expected a 1-D float array")
    assert opt.state_dict() == {"t": 0}
