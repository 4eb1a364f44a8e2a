"""Update rules against plain float64 references, in place, without per-step allocations, and
converging on a quadratic."""

import tracemalloc

import numpy as np
import pytest

from distnn.optim import RULES, make_optimizer


def reference(name, x, grads, lrs, **h):
    """The textbook updates, written out literally (new arrays everywhere), over lists of
    gradients and learning rates."""
    x, v, m = x.copy(), np.zeros_like(x), np.zeros_like(x)
    for t, (g, lr) in enumerate(zip(grads, lrs, strict=True), start=1):
        if name == "sgd":
            x = x - lr * g
        elif name == "momentum":
            v = h["mu"] * v - lr * g
            x = x + v
        elif name == "nesterov":
            v_prev = v
            v = h["mu"] * v - lr * g
            x = x + (-h["mu"] * v_prev + (1 + h["mu"]) * v)
        elif name == "adagrad":
            v = v + g * g
            x = x - lr * g / (np.sqrt(v) + h["eps"])
        elif name == "rmsprop":
            v = h["decay_rate"] * v + (1 - h["decay_rate"]) * g * g
            x = x - lr * g / (np.sqrt(v) + h["eps"])
        else:
            if name == "adamw":
                mask = h["decay_mask"] if h["decay_mask"] is not None else np.ones_like(x)
                x = x - lr * h["weight_decay"] * mask * x
            m = h["beta1"] * m + (1 - h["beta1"]) * g
            v = h["beta2"] * v + (1 - h["beta2"]) * g * g
            m_hat, v_hat = m / (1 - h["beta1"] ** t), v / (1 - h["beta2"] ** t)
            x = x - lr * m_hat / (np.sqrt(v_hat) + h["eps"])
    return x


MASK = np.array([1.0, 0, 1, 1, 0, 1, 1, 0])
CASES = {
    "sgd": {}, "momentum": {"mu": 0.9}, "nesterov": {"mu": 0.8}, "adagrad": {"eps": 1e-7},
    "rmsprop": {"decay_rate": 0.9, "eps": 1e-6},
    "adam": {"beta1": 0.9, "beta2": 0.999, "eps": 1e-8},
    "adamw": {"beta1": 0.8, "beta2": 0.99, "eps": 1e-8, "weight_decay": 0.1,
              "decay_mask": MASK},
}
NAMES = list(CASES)


def problem(seed, n=8, steps=7, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x0 = rng.standard_normal(n).astype(dtype)
    grads = [rng.standard_normal(n).astype(dtype) for _ in range(steps)]
    lrs = [0.05 * 0.9 ** i for i in range(steps)]  # a changing rate, as a schedule gives
    return x0, grads, lrs


def test_every_rule_is_covered():
    assert sorted(CASES) == sorted(RULES)


@pytest.mark.parametrize("name", NAMES)
def test_matches_reference_in_place(name):
    x0, grads, lrs = problem(0)
    params = x0.copy()
    opt = make_optimizer(name, **CASES[name])
    for g, lr in zip(grads, lrs, strict=True):
        same = params
        opt.step(params, g, lr)
        assert params is same
    np.testing.assert_allclose(params, reference(name, x0, grads, lrs, **CASES[name]),
                               rtol=1e-12, atol=1e-14)
    assert opt.t == len(grads)


@pytest.mark.parametrize("name", NAMES)
def test_float32_follows_the_float64_reference(name):
    x0, grads, lrs = problem(1, dtype=np.float32)
    params = x0.copy()
    opt = make_optimizer(name, **CASES[name])
    for g, lr in zip(grads, lrs, strict=True):
        opt.step(params, g, lr)
    assert params.dtype == np.float32
    assert all(v.dtype == np.float32 for k, v in opt.state_dict().items() if k != "t")
    expect = reference(name, x0.astype(np.float64), [g.astype(np.float64) for g in grads], lrs,
                       **CASES[name])
    np.testing.assert_allclose(params, expect, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("name", NAMES)
def test_step_allocates_nothing_after_the_first(name):
    hp = dict(CASES[name], decay_mask=None) if name == "adamw" else CASES[name]
    params = np.linspace(-1, 1, 100_000, dtype=np.float32)  # 400 kB: any temporary would show
    grads = np.cos(params)
    peak = peak_bytes_after_first_step(make_optimizer(name, **hp), params, grads)
    assert peak < 4096, f"{name} allocated {peak} bytes in a step"


def peak_bytes_after_first_step(opt, params, grads) -> int:
    """The most memory three steps allocate at once, after a first step (state allocation)."""
    opt.step(params, grads, 0.01)
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.step(params, grads, 0.01)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_adam_step_one_is_bias_corrected():
    g = np.array([0.5, -2.0, 1e-3, 30.0])
    params = np.zeros(4)
    make_optimizer("adam", beta1=0.9, beta2=0.999, eps=1e-8).step(params, g, 0.1)
    # m_hat = g and v_hat = g^2 at t=1, so the first step is lr * g / (|g| + eps) ~ lr sign(g);
    # without the correction it would be ~3.16 lr (0.1 / sqrt(0.001)).
    np.testing.assert_allclose(params, -0.1 * g / (np.abs(g) + 1e-8), rtol=1e-12)


@pytest.mark.parametrize("mask", [MASK, None])
def test_adamw_decays_only_where_the_mask_is_one(mask):
    x0 = np.arange(1.0, 9.0)
    params = x0.copy()
    opt = make_optimizer("adamw", weight_decay=0.5, decay_mask=mask)
    zero = np.zeros(8)  # no gradient: Adam's part is 0 / (0 + eps) = 0, only the decay moves x
    for _ in range(3):
        opt.step(params, zero, 0.1)
    keep = np.ones(8) if mask is None else mask
    expect = np.where(keep == 1, x0 * (1 - 0.1 * 0.5) ** 3, x0)
    np.testing.assert_allclose(params, expect, rtol=1e-14)
    assert np.array_equal(params[keep == 0], x0[keep == 0])


def test_adamw_without_decay_equals_adam():
    x0, grads, lrs = problem(2)
    a, b = x0.copy(), x0.copy()
    adam, adamw = make_optimizer("adam"), make_optimizer("adamw", weight_decay=0.0)
    for g, lr in zip(grads, lrs, strict=True):
        adam.step(a, g, lr)
        adamw.step(b, g, lr)
    assert np.array_equal(a, b)


def test_adamw_mask_is_copied_at_construction():
    mask = MASK.copy()
    opt = make_optimizer("adamw", weight_decay=0.5, decay_mask=mask)
    mask[:] = 1  # the caller's array changing later must not change the rule
    params = np.ones(8)
    opt.step(params, np.zeros(8), 0.1)
    assert np.array_equal(params == 1, MASK == 0)


@pytest.mark.parametrize("name", NAMES)
def test_minimises_a_quadratic(name):
    # f(x) = 0.5 sum(a (x - c)^2) with curvatures a from 0.5 to 2: grad = a (x - c).
    a, c = np.linspace(0.5, 2.0, 8), np.linspace(-1.0, 1.0, 8)
    hp = dict(CASES[name], weight_decay=0.0) if name == "adamw" else CASES[name]
    # Adaptive rules step ~lr per coordinate whatever the gradient, so they hover ~lr from the
    # minimum at a constant rate: give them a decaying one (0.99 per step).
    lr, decay = {"sgd": (0.5, 1.0), "momentum": (0.1, 1.0), "nesterov": (0.1, 1.0),
                 "adagrad": (0.5, 1.0)}.get(name, (0.05, 0.99))
    opt, x, grad = make_optimizer(name, **hp), np.zeros(8), np.empty(8)
    for i in range(600):
        np.multiply(a, x - c, out=grad)
        opt.step(x, grad, lr * decay ** i)
    assert np.abs(x - c).max() < 1e-3, (name, x - c)
