"""optim/lbfgs.py on its own: the two-loop direction against the BFGS inverse-Hessian
recursion written out as matrices, the strong Wolfe conditions of every accepted step, a convex
problem solved to scipy's optimum, state round trips and refusals."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.optim import LBFGS, make_optimizer
from distnn.optim.lbfgs import _LineSearch, cubic_min


def inverse_hessian(pairs, n):
    """H_k by the BFGS update H <- (I - r s y') H (I - r y s') + r s s', from gamma I."""
    s, y = pairs[-1]
    h = (s @ y) / (y @ y) * np.eye(n)
    for s, y in pairs:
        r = 1.0 / (y @ s)
        left = np.eye(n) - r * np.outer(s, y)
        h = left @ h @ left.T + r * np.outer(s, s)
    return h


def test_the_two_loop_direction_is_minus_the_bfgs_inverse_hessian_times_g():
    rng = np.random.default_rng(0)
    n, opt = 7, LBFGS(history=3)
    pairs = []
    for _ in range(5):  # more pairs than the history keeps
        s = rng.standard_normal(n)
        y = s + 0.3 * rng.standard_normal(n)  # positive curvature
        opt.remember(s, y)
        pairs.append((s, y))
    g = rng.standard_normal(n)
    expected = -inverse_hessian(pairs[-3:], n) @ g
    np.testing.assert_allclose(opt.direction(g), expected, rtol=1e-10, atol=1e-12)
    assert len(opt.s) == 3


def test_a_pair_without_positive_curvature_is_not_kept():
    opt = LBFGS()
    opt.remember(np.ones(3), -np.ones(3))
    assert opt.s == []


def quadratic(a, b):
    """f = 0.5 x'Ax - b'x on float32 parameters, evaluated in float64."""
    x = np.zeros(len(b), np.float32)

    def evaluate():
        v = x.astype(np.float64)
        return 0.5 * v @ a @ v - b @ v, a @ v - b

    return x, evaluate


def test_every_accepted_step_satisfies_the_strong_wolfe_conditions():
    rng = np.random.default_rng(1)
    m = rng.standard_normal((20, 20))
    a, b = m @ m.T + 0.1 * np.eye(20), rng.standard_normal(20)
    x, evaluate = quadratic(a, b)
    opt = LBFGS(c1=1e-4, c2=0.9)
    f, g = evaluate()
    for _ in range(150):  # cond(A) ~ 550: scipy's L-BFGS-B takes 113 iterations here
        x0, d = x.astype(np.float64), opt.direction(g)
        it = opt.iterate(x, f, g, evaluate)
        if it.converged:
            break
        assert it.f <= f + opt.c1 * it.t * (g @ d) + 1e-12
        assert abs(it.g @ d) <= opt.c2 * abs(g @ d) + 1e-12
        np.testing.assert_array_equal(x, (x0 + it.t * d).astype(np.float32))
        f, g = it.f, it.g
    solution = np.linalg.solve(a, b)
    np.testing.assert_allclose(x, solution, rtol=1e-4, atol=1e-4)


def test_a_logistic_regression_reaches_scipys_optimum():
    from scipy import optimize as scipy_optimize  # the test extra installs scipy
    rng = np.random.default_rng(2)
    features = rng.standard_normal((300, 5))
    labels = (features @ rng.standard_normal(5) + 0.5 * rng.standard_normal(300) > 0) * 1.0

    def objective(w):
        z = features @ w
        f = np.mean(np.logaddexp(0, z) - labels * z) + 0.005 * w @ w
        return f, features.T @ (1 / (1 + np.exp(-z)) - labels) / len(z) + 0.01 * w

    best = scipy_optimize.minimize(objective, np.zeros(5), jac=True, method="L-BFGS-B",
                                   options={"gtol": 1e-10, "ftol": 1e-15})
    x = np.zeros(5, np.float32)
    opt = LBFGS(tolerance_grad=1e-6)
    f, g = objective(x.astype(np.float64))
    for _ in range(50):
        it = opt.iterate(x, f, g, lambda: objective(x.astype(np.float64)))
        f, g = it.f, it.g
        if it.converged:
            break
    assert it.converged
    assert abs(f - best.fun) < 1e-7
    np.testing.assert_allclose(x, best.x, atol=1e-4)


def test_a_function_without_decrease_along_d_stops_without_moving():
    x = np.array([1.0], np.float32)

    def evaluate():  # a gradient that lies: the loss only grows along -g
        return float(x[0]) ** 2 * 0 + float(abs(x[0] - 1)) + 1.0, np.array([1.0])

    opt = LBFGS(max_evals=6)
    it = opt.iterate(x, 1.0, np.array([1.0]), evaluate)
    assert it.converged and it.t == 0.0 and x[0] == 1.0
    assert it.reason == "the line search found no decrease"


def test_the_line_search_gives_up_on_a_non_finite_loss_by_bisecting_back():
    calls = []

    def phi(t):
        calls.append(t)
        f = np.inf if t > 0.3 else (t - 0.2) ** 2
        return f, np.array([2 * (t - 0.2)]), 2 * (t - 0.2)

    search = _LineSearch(phi, 0.04, -0.4, 1e-4, 0.9, 20, 1e-12)
    t, f, _ = search.run(1.0)
    assert 0 < t <= 0.3 and f < 0.04
    assert calls[0] == 1.0 and calls[1] == 0.5


def test_cubic_min_is_the_minimiser_of_a_cubic():
    # f(t) = (t - 1)^3 - 3 (t - 1): minimum at t = 2 (f' = 3 (t-1)^2 - 3)
    def point(t):
        return t, (t - 1) ** 3 - 3 * (t - 1), 3 * (t - 1) ** 2 - 3

    assert cubic_min(point(1.5), point(3.0), 1.5, 3.0) == pytest.approx(2.0)
    assert cubic_min(point(1.5), point(3.0), 2.5, 3.0) == 2.5  # clipped to the interval


def test_state_round_trips_and_bad_state_is_refused():
    opt = LBFGS(history=2)
    opt.remember(np.array([1.0, 0.0]), np.array([2.0, 0.5]))
    opt.t, opt.evals = 3, 7
    state = opt.state_dict()
    other = LBFGS(history=2)
    other.load_state_dict(state)
    assert other.t == 3 and other.evals == 7 and not other.converged
    np.testing.assert_array_equal(other.s[0], [1.0, 0.0])
    g = np.array([0.3, -1.0])
    np.testing.assert_array_equal(other.direction(g), opt.direction(g))
    with pytest.raises(ValueError, match="3 pairs, expected at most history 2"):
        other.load_state_dict({**state, "pairs": 3})
    with pytest.raises(ValueError, match=r"s is .*expected \(1, P\) float64"):
        other.load_state_dict({**state, "s": np.zeros(2)})


def test_bad_hyper_parameters_and_the_mini_batch_step_are_refused():
    with pytest.raises(ValueError, match="c1 0.9 >= c2 0.5, expected c1 < c2"):
        make_optimizer("lbfgs", c1=0.9, c2=0.5)
    with pytest.raises(ValueError, match="history"):
        make_optimizer("lbfgs", history=0)
    with pytest.raises(TypeError, match="lbfgs is full-batch"):
        LBFGS().step(np.zeros(2, np.float32), np.zeros(2, np.float32), 0.1)
