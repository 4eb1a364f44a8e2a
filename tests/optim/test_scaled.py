"""ScaledLR: a learning-rate multiplier per entry, for every update rule, is the rule run with
lr * multiplier on that entry (all rules are elementwise, so the reference runs the rule on the
whole vector with the scaled rate and keeps that multiplier's entries)."""

import numpy as np
import pytest

from distnn.optim import RULES, ScaledLR, make_optimizer

MULTS = np.array([0.0, 0.1, 1.0, 2.5])


def rule(name):
    hp = {"weight_decay": 0.1} if name == "adamw" else {}
    return make_optimizer(name, **hp)


@pytest.mark.parametrize("name", sorted(RULES))
def test_each_entry_moves_as_the_rule_with_its_scaled_rate(name):
    rng = np.random.default_rng(1)
    n = 4 * 25
    scale = np.repeat(MULTS, 25)
    start = rng.standard_normal(n)
    grads = [rng.standard_normal(n) for _ in range(4)]
    scaled, params = ScaledLR(rule(name), scale), start.copy()
    refs = {s: (rule(name), start.copy()) for s in MULTS}
    lrs = [0.1, 0.05, 0.2, 0.1]
    for lr, g in zip(lrs, grads, strict=True):
        scaled.step(params, g.copy(), lr)
        for s, (r, p) in refs.items():
            r.step(p, g.copy(), lr * s)
    for s, (_, p) in refs.items():
        mine = scale == s
        if s in (0.0, 1.0):  # kept to the bit, or the rule's own value to the bit
            np.testing.assert_array_equal(params[mine], p[mine])
        else:
            np.testing.assert_allclose(params[mine], p[mine], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(params[scale == 0], start[scale == 0])
    assert scaled.t == 4 and scaled.state_dict()["t"] == 4


def test_state_is_the_rules_own_and_loads_back():
    scale = np.repeat(MULTS, 3)
    a = ScaledLR(make_optimizer("momentum"), scale)
    p = np.ones(12)
    a.step(p, np.full(12, 0.5), 0.1)
    b = ScaledLR(make_optimizer("momentum"), scale)
    b.load_state_dict(a.state_dict())
    q = p.copy()
    a.step(p, np.full(12, 0.25), 0.1)
    b.step(q, np.full(12, 0.25), 0.1)
    np.testing.assert_array_equal(p, q)


def test_bad_multipliers_and_sizes_are_refused():
    with pytest.raises(ValueError, match="finite numbers >= 0"):
        ScaledLR(make_optimizer("sgd"), np.array([1.0, -0.1]))
    with pytest.raises(ValueError, match="shape"):
        ScaledLR(make_optimizer("sgd"), np.ones(3)).step(np.ones(4), np.ones(4), 0.1)
