"""Update rules against straightforward float64 references, state round trips, errors."""

import numpy as np
import pytest

from distnn.optim import make_optimizer


def reference(name, x, grads, lr, **h):
    """Textbook updates, written out plainly, over a list of gradients."""
    x = x.copy()
    v = np.zeros_like(x)
    m = np.zeros_like(x)
    for t, g in enumerate(grads, start=1):
        if name == "sgd":
            x -= lr * g
        elif name == "momentum":
            v = h["mu"] * v - lr * g
            x += v
        elif name == "nesterov":
            v_prev = v
            v = h["mu"] * v - lr * g
            x += -h["mu"] * v_prev + (1 + h["mu"]) * v
        elif name == "adagrad":
            v += g * g
            x -= lr * g / (np.sqrt(v) + h["eps"])
        elif name == "rmsprop":
            v = h["decay_rate"] * v + (1 - h["decay_rate"]) * g * g
            x -= lr * g / (np.sqrt(v) + h["eps"])
        elif name in ("adam", "adamw"):
            if name == "adamw":
                x -= lr * h["wd"] * x * (h["decay_mask"] if h.get("decay_mask") is not None else 1)
            m = h["beta1"] * m + (1 - h["beta1"]) * g
            v = h["beta2"] * v + (1 - h["beta2"]) * g * g
            mhat, vhat = m / (1 - h["beta1"] ** t), v / (1 - h["beta2"] ** t)
            x -= lr * mhat / (np.sqrt(vhat) + h["eps"])
    return x


CASES = [
    ("sgd", {}), ("momentum", {"mu": 0.9}), ("nesterov", {"mu": 0.8}), ("adagrad", {"eps": 1e-8}),
    ("rmsprop", {"decay_rate": 0.9, "eps": 1e-8}),
    ("adam", {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}),
    ("adamw", {"beta1": 0.9, "beta2": 0.99, "eps": 1e-8, "wd": 0.1,
               "decay_mask": np.array([1.0, 0, 1, 1, 0, 1, 1, 0])}),
]


@pytest.mark.parametrize("name,h", CASES)
def test_matches_reference(name, h):
    rng = np.random.default_rng(0)
    x0 = rng.standard_normal(8)
    grads = [rng.standard_normal(8) for _ in range(6)]
    params = x0.copy()
    ident = id(params)
    opt = make_optimizer(name, **h)
    for g in grads:
        opt.step(params, g, 0.05)
    assert id(params) == ident
    np.testing.assert_allclose(params, reference(name, x0, grads, 0.05, **h), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,h", CASES)
def test_state_round_trip_continues_bit_exact(name, h):
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(8).astype(np.float32) for _ in range(6)]
    a = rng.standard_normal(8).astype(np.float32)
    b = a.copy()
    opt_a = make_optimizer(name, **h)
    for g in grads[:3]:
        opt_a.step(a, g, 0.01)
    b[...] = a
    opt_b = make_optimizer(name, **h)
    opt_b.load_state_dict(opt_a.state_dict())
    for g in grads[3:]:
        opt_a.step(a, g, 0.01)
        opt_b.step(b, g, 0.01)
    assert np.array_equal(a, b)


def test_adam_first_step_is_bias_corrected():
    params, g = np.zeros(3), np.array([0.5, -2.0, 1e-3])
    make_optimizer("adam").step(params, g, 0.1)
    np.testing.assert_allclose(params, -0.1 * np.sign(g), rtol=1e-4)  # m_hat/sqrt(v_hat) = sign


@pytest.mark.parametrize("name,h", CASES)
def test_minimises_a_quadratic(name, h):
    target = np.linspace(-1, 1, 8)
    x = np.zeros(8)
    h = dict(h)
    if name == "adamw":
        h["wd"] = 0.0
    opt = make_optimizer(name, **h)
    lr = {"adagrad": 0.5, "rmsprop": 0.01, "adam": 0.05, "adamw": 0.05}.get(name, 0.1)
    for _ in range(500):
        opt.step(x, x - target, lr)
    assert np.abs(x - target).max() < 0.05, name


def test_errors_name_the_value():
    with pytest.raises(ValueError, match="'lbfgs' is unknown; expected one of sgd"):
        make_optimizer("lbfgs")
    with pytest.raises(ValueError, match="mu=1.0"):
        make_optimizer("momentum", mu=1.0)
    with pytest.raises(ValueError, match="eps=-1"):
        make_optimizer("adam", eps=-1)
    with pytest.raises(ValueError, match="hyperparameters \\['gamma'\\]"):
        make_optimizer("sgd", gamma=3)
    opt = make_optimizer("momentum")
    opt.step(np.zeros(4), np.ones(4), 0.1)
    with pytest.raises(ValueError, match="velocity has shape \\(3,\\), expected \\(4,\\)"):
        opt.load_state_dict({"t": 1, "velocity": np.zeros(3)})
    with pytest.raises(ValueError, match="missing \\['velocity'\\]"):
        opt.load_state_dict({"t": 1})
