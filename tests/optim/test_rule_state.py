"""Update-rule state: round trips continue bit-exactly (also through HDF5), loading validates,
and the factory and step reject bad input with the value in the message."""

import numpy as np
import pytest

from distnn.optim import make_optimizer

from .test_rules import CASES, NAMES, problem


def run(opt, params, grads, lrs):
    for g, lr in zip(grads, lrs, strict=True):
        opt.step(params, g, lr)


def through_hdf5(state, path):
    """Store like the checkpoint does: arrays as datasets, numbers as attributes."""
    h5py = pytest.importorskip("h5py")
    with h5py.File(path, "w") as fh:
        for key, value in state.items():
            if isinstance(value, np.ndarray):
                fh.create_dataset(key, data=value)
            else:
                fh.attrs[key] = value
    with h5py.File(path, "r") as fh:
        out = {k: np.array(v) for k, v in fh.items()}
        out.update({k: v.item() for k, v in fh.attrs.items()})
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_continues_bit_exact(name, dtype, tmp_path):
    x0, grads, lrs = problem(3, steps=8, dtype=dtype)
    a = x0.copy()
    first = make_optimizer(name, **CASES[name])
    run(first, a, grads[:4], lrs[:4])
    state = first.state_dict()
    assert all(isinstance(v, (np.ndarray, int, float)) for v in state.values())
    b = a.copy()
    second = make_optimizer(name, **CASES[name])
    second.load_state_dict(through_hdf5(state, tmp_path / "opt.h5"))
    run(first, a, grads[4:], lrs[4:])
    run(second, b, grads[4:], lrs[4:])
    assert np.array_equal(a, b)
    assert second.t == first.t == 8


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_is_a_snapshot(name):
    x0, grads, lrs = problem(4)
    opt = make_optimizer(name, **CASES[name])
    run(opt, x0, grads[:2], lrs[:2])
    snap = opt.state_dict()
    frozen = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in snap.items()}
    run(opt, x0, grads[2:], lrs[2:])
    for key, value in frozen.items():
        assert np.array_equal(snap[key], value), key


@pytest.mark.parametrize("name", ["momentum", "adam"])
def test_fresh_state_round_trips_and_resets(name):
    fresh = make_optimizer(name).state_dict()
    assert fresh == {"t": 0}
    x0, grads, lrs = problem(5)
    a, b = x0.copy(), x0.copy()
    used = make_optimizer(name)
    run(used, b, grads[:3], lrs[:3])
    used.load_state_dict(fresh)  # back to zeros, keeping the allocated buffers
    b[...] = x0
    run(used, b, grads, lrs)
    run(make_optimizer(name), a, grads, lrs)
    assert np.array_equal(a, b)


def test_state_loaded_before_the_first_step_takes_the_params_dtype():
    x0, grads, lrs = problem(6)
    a = x0.astype(np.float32)
    src = make_optimizer("momentum")
    run(src, x0.copy(), grads[:2], lrs[:2])  # float64 state
    opt = make_optimizer("momentum")
    opt.load_state_dict(src.state_dict())
    opt.step(a, grads[2].astype(np.float32), 0.1)
    assert opt.state_dict()["velocity"].dtype == np.float32


def stepped(name="adam", n=4):
    opt = make_optimizer(name)
    opt.step(np.zeros(n), np.ones(n), 0.1)
    return opt


@pytest.mark.parametrize("bad,match", [
    ({"t": 1, "m": np.zeros(4), "v": np.zeros(4), "w": np.zeros(4)}, "unknown key 'w'"),
    ({"t": 1, "m": np.zeros(4)}, "missing key 'v'"),
    ({"m": np.zeros(4), "v": np.zeros(4)}, "missing key 't'"),
    ({"t": -1, "m": np.zeros(4), "v": np.zeros(4)}, "t=-1, expected an integer >= 0"),
    ({"t": 1.5, "m": np.zeros(4), "v": np.zeros(4)}, "t=1.5"),
    ({"t": 1, "m": np.zeros(3), "v": np.zeros(4)}, r"m has shape \(3,\), expected \(4,\)"),
    ({"t": 1, "m": np.zeros((2, 2)), "v": np.zeros(4)}, r"m is float64\[2, 2\], expected a 1-D"),
    ({"t": 1, "m": [0.0] * 4, "v": np.zeros(4)}, "m is list"),
    ({"t": 1, "m": np.zeros(4), "v": -np.ones(4)}, "v has negative entries"),
    ([("t", 1)], "expected a dict"),
])
def test_load_rejects_bad_state_and_changes_nothing(bad, match):
    opt = stepped()
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(bad)
    after = opt.state_dict()
    assert after["t"] == before["t"] and all(
        np.array_equal(after[k], before[k]) for k in ("m", "v"))


def test_load_checks_buffers_agree_before_the_first_step():
    with pytest.raises(ValueError, match="shapes"):
        make_optimizer("adam").load_state_dict({"t": 1, "m": np.zeros(3), "v": np.zeros(4)})
    opt = make_optimizer("momentum")
    opt.load_state_dict({"t": 2, "velocity": np.zeros(3)})
    with pytest.raises(ValueError, match="params has 4 elements, but this rule's state is for 3"):
        opt.step(np.zeros(4), np.zeros(4), 0.1)
    with pytest.raises(ValueError, match=r"m has shape \(5,\), expected \(8,\)"):
        make_optimizer("adamw", decay_mask=np.ones(8)).load_state_dict(
            {"t": 1, "m": np.zeros(5), "v": np.zeros(5)})


def test_factory_errors_name_the_value():
    with pytest.raises(ValueError, match="'bfgs' is unknown; expected one of sgd, momentum, "
                                         "nesterov, adagrad, rmsprop, adam, adamw, lbfgs"):
        make_optimizer("bfgs")
    with pytest.raises(ValueError, match=r"sgd: unknown key 'mu'; expected some of \(none\)"):
        make_optimizer("sgd", mu=0.9)
    with pytest.raises(ValueError, match="unknown key 'momentum'; expected some of mu"):
        make_optimizer("nesterov", momentum=0.9)


@pytest.mark.parametrize("name,hp,match", [
    ("momentum", {"mu": 1.0}, r"momentum: mu=1.0, expected a number in \[0, 1\)"),
    ("nesterov", {"mu": -0.1}, "mu=-0.1"),
    ("momentum", {"mu": True}, "mu=True"),
    ("adagrad", {"eps": 0}, "eps=0"),
    ("rmsprop", {"decay_rate": 1}, "decay_rate=1"),
    ("rmsprop", {"eps": -1e-8}, "eps=-1e-08"),
    ("adam", {"beta1": 1.0}, "beta1=1.0"),
    ("adam", {"beta2": float("nan")}, "beta2=nan"),
    ("adam", {"eps": "1e-8"}, "eps='1e-8'"),
    ("adamw", {"weight_decay": -0.1}, "weight_decay=-0.1"),
    ("adamw", {"wd": 0.1}, "unknown key 'wd'; expected some of beta1, beta2, eps, weight_decay"),
    ("adamw", {"decay_mask": np.full(4, 0.5)}, "decay_mask holds 0.5, expected only 0 and 1"),
    ("adamw", {"decay_mask": np.ones((2, 2))}, "decay_mask is float64\\[2, 2\\]"),
    ("adamw", {"decay_mask": [1, 0]}, "decay_mask is list"),
])
def test_bad_hyperparameters_are_named(name, hp, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer(name, **hp)


@pytest.mark.parametrize("params,grads,lr,match", [
    (np.zeros(4), np.zeros(4), -0.1, "lr=-0.1"),
    (np.zeros(4), np.zeros(4), float("inf"), "lr=inf"),
    (np.zeros(4), np.zeros(3), 0.1, r"grads float64\[3\]"),
    (np.zeros(4), np.zeros(4, np.float32), 0.1, r"grads float32\[4\]"),
    (np.zeros((2, 2)), np.zeros((2, 2)), 0.1, "1-D float arrays"),
    (np.zeros(4, np.int64), np.zeros(4, np.int64), 0.1, r"params int64\[4\]"),
])
def test_step_rejects_bad_input(params, grads, lr, match):
    with pytest.raises(ValueError, match=match):
        make_optimizer("momentum").step(params, grads, lr)


def test_step_rejects_read_only_params_and_a_resized_model():
    frozen = np.zeros(4)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="params writable"):
        make_optimizer("sgd").step(frozen, np.zeros(4), 0.1)
    with pytest.raises(ValueError, match="params has 5 elements, but this rule's state is for 4"):
        stepped("adam", 4).step(np.zeros(5), np.zeros(5), 0.1)
    with pytest.raises(ValueError, match="params has 7 elements, but this rule's state is for 8"):
        make_optimizer("adamw", decay_mask=MASK8).step(np.zeros(7), np.zeros(7), 0.1)


MASK8 = np.ones(8)
