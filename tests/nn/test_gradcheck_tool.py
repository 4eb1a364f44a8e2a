"""Gradient checking is a tool: it must FAIL a layer whose backward pass is wrong and pass a right
one, check the mode and the number of entries it is asked to, be reproducible from its seed, and
rel_error / numerical_grad must return their documented values at hand-computed points.

The layers here are tiny stand-ins written for the purpose (out = x * w), so that every expected
error can be worked out by hand.
"""

import numpy as np
import pytest

from distnn.nn import check_layer, numerical_grad, rel_error


class Scale:
    """out = x * w per feature; parameter w (D,). d(out*r)/dx = r * w, d/dw = sum_n r * x.

    Deliberate faults: `dx_factor` scales the input gradient, `dx_shift` adds a constant to it,
    `bad_entry` adds 1 to one entry of it, `dw_first_row` forgets all samples but the first in
    the weight gradient. It records the training flag of every forward call and which entries
    of x and w differ from `watch`ed copies (the entries gradient checking perturbs)."""

    def __init__(self, w, dx_factor=1.0, dx_shift=0.0, bad_entry=None, dw_first_row=False):
        self.p = {"w": np.array(w, np.float64)}
        self.g = {"w": np.zeros_like(self.p["w"])}
        self.dx_factor, self.dx_shift, self.bad_entry = dx_factor, dx_shift, bad_entry
        self.dw_first_row = dw_first_row
        self.flags, self.moved_x, self.moved_w = [], set(), set()
        self._x0 = self._w0 = None

    def watch(self, x):
        self._x0, self._w0 = x.copy(), self.p["w"].copy()

    def forward(self, x, training):
        self.flags.append(training)
        if self._x0 is not None:
            self.moved_x.update(np.flatnonzero(x != self._x0).tolist())
            self.moved_w.update(np.flatnonzero(self.p["w"] != self._w0).tolist())
        self._x = x.copy()
        return x * self.p["w"]

    def backward(self, dout):
        rows = slice(0, 1) if self.dw_first_row else slice(None)
        self.g["w"][...] = (dout[rows] * self._x[rows]).sum(axis=0)
        dx = dout * self.p["w"] * self.dx_factor + self.dx_shift
        if self.bad_entry is not None:
            dx.reshape(-1)[self.bad_entry] += 1.0
        return dx


def data(n=3, d=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), 1 + rng.random(d)


# -- check_layer ---------------------------------------------------------------------------------
def test_check_layer_passes_a_right_backward():
    x, w = data()
    errors = check_layer(Scale(w), x)
    assert sorted(errors) == ["w", "x"]
    assert errors["x"] < 1e-8 and errors["w"] < 1e-8, errors  # linear: only round-off


def test_check_layer_fails_a_wrong_input_gradient():
    x, w = data()
    errors = check_layer(Scale(w, dx_factor=1.1), x)
    # every entry: |1.1 g - g| / (1.1 |g| + |g|) = 0.1 / 2.1
    assert errors["x"] == pytest.approx(1 / 21, rel=1e-6)
    assert errors["w"] < 1e-8  # the weight gradient is right and reported so


def test_check_layer_fails_a_wrong_parameter_gradient():
    x, w = data()
    errors = check_layer(Scale(w, dw_first_row=True), x)
    assert errors["w"] > 0.01
    assert errors["x"] < 1e-8


def test_check_layer_finds_one_wrong_entry_when_it_checks_them_all():
    x, w = data()  # 12 entries: within the default 60, so every one is checked
    assert check_layer(Scale(w, bad_entry=7), x)["x"] > 0.01
    assert check_layer(Scale(w, bad_entry=7), x, max_checks=12)["x"] > 0.01
    assert check_layer(Scale(w), x, max_checks=12)["x"] < 1e-8


class ModeLayer:
    """out = 2x in training, 3x in evaluation; backward always says 2: right only in training."""

    def __init__(self):
        self.p, self.g, self.flags = {}, {}, []

    def forward(self, x, training):
        self.flags.append(training)
        return x * (2.0 if training else 3.0)

    def backward(self, dout):
        return 2.0 * dout


def test_check_layer_checks_training_mode_by_default_and_the_mode_it_is_given():
    x = data()[0]
    layer = ModeLayer()
    errors = check_layer(layer, x)
    assert errors == {"x": pytest.approx(0, abs=1e-8)}
    assert layer.flags and all(flag is True for flag in layer.flags)
    layer = ModeLayer()
    errors = check_layer(layer, x, training=False)
    assert errors["x"] == pytest.approx(0.2, rel=1e-6)  # |2 - 3| / (2 + 3) at every entry
    assert layer.flags and all(flag is False for flag in layer.flags)


def test_check_layer_checks_60_entries_of_x_and_of_each_parameter_by_default():
    x, w = data(n=1, d=100)
    layer = Scale(w)
    layer.watch(x)
    check_layer(layer, x)
    assert len(layer.moved_x) == 60 and len(layer.moved_w) == 60
    # one forward pass for the output shape, one before backward, two per checked entry
    assert len(layer.flags) == 2 + 2 * 60 + 2 * 60
    np.testing.assert_array_equal(layer._x0, x)  # x is left as it was
    layer = Scale(w)
    layer.watch(x)
    check_layer(layer, x, max_checks=5)
    assert len(layer.moved_x) == 5 and len(layer.moved_w) == 5
    assert len(layer.flags) == 2 + 2 * 5 + 2 * 5
    x, w = data(n=2, d=3)  # 6 entries of x, 3 of w: all of them
    layer = Scale(w)
    layer.watch(x)
    check_layer(layer, x)
    assert layer.moved_x == set(range(6)) and layer.moved_w == set(range(3))
    assert len(layer.flags) == 2 + 2 * 6 + 2 * 3


def positions(seed=None):
    x, w = data(n=1, d=100)
    layer = Scale(w)
    layer.watch(x)
    if seed is None:
        check_layer(layer, x)
    else:
        check_layer(layer, x, seed=seed)
    return layer.moved_x, layer.moved_w


def test_the_seed_picks_the_entries_checked_for_x_and_for_each_parameter():
    x0, w0 = positions()
    assert (x0, w0) == positions(0)  # the default seed is 0, and the draw is reproducible
    x1, w1 = positions(1)
    assert x1 != x0, "x: the same entries for seeds 0 and 1"
    assert w1 != w0, "w: the same entries for seeds 0 and 1"


def test_check_layer_errors_are_reproducible_from_the_seed():
    """An additive fault: each entry's error depends on the projection r and on which entries
    are drawn, so the reported number depends on the seed, and only on it."""
    x, w = data(n=2, d=50)
    first = check_layer(Scale(w, dx_shift=0.01), x)
    assert first["x"] > 1e-3
    assert check_layer(Scale(w, dx_shift=0.01), x) == first
    assert check_layer(Scale(w, dx_shift=0.01), x, seed=0) == first
    assert check_layer(Scale(w, dx_shift=0.01), x, seed=1)["x"] != first["x"]


# -- rel_error -----------------------------------------------------------------------------------
@pytest.mark.parametrize("a,b,want", [
    ([1.0, 2.0], [3.0, 2.0], 0.5),  # max(|1 - 3| / (1 + 3), 0)
    ([1.0], [-1.0], 1.0),  # opposite signs: 2 / 2
    ([3.0, -4.0], [3.0, -4.0], 0.0),
    ([0.0, 0.0], [0.0, 0.0], 0.0),  # no 0 / 0
    ([], [], 0.0),  # nothing to compare
    (np.zeros((0, 3)), np.zeros((0, 3)), 0.0),
    ([2.0, 6.0], [1.0, 2.0], 0.5),  # entries 1/3 and 4/8
])
def test_rel_error_at_hand_points(a, b, want):
    assert rel_error(np.asarray(a), np.asarray(b)) == pytest.approx(want, rel=1e-15, abs=0)
    assert rel_error(np.asarray(b), np.asarray(a)) == pytest.approx(want, rel=1e-15, abs=0)


@pytest.mark.parametrize("scale", [1e-6, 1e-4, 1.0, 1e4])
def test_rel_error_floor_is_relative_to_the_largest_magnitude(scale):
    """A tiny entry next to large ones: its denominator is floored at 1e-4 * the largest
    magnitude. [100, 0] vs [100, 0.001]: 0.001 / max(0.001, 0.01) = 0.1, at any scale."""
    a, b = np.array([100.0, 0.0]) * scale, np.array([100.0, 0.001]) * scale
    assert rel_error(a, b) == pytest.approx(0.1, rel=1e-9)
    assert rel_error(b, a) == pytest.approx(0.1, rel=1e-9)
    assert rel_error(a, b, floor=0.0) == pytest.approx(1.0, rel=1e-9)  # no floor: 0.001 / 0.001
    assert rel_error(a, b, floor=1e-3) == pytest.approx(0.01, rel=1e-9)  # 0.001 / 0.1


def test_rel_error_compares_integers_as_numbers():
    """Computed in float64 whatever the input type: -128 in int8 has no int8 absolute value."""
    a, b = np.array([-128, 1], np.int8), np.array([-127, 1], np.int8)
    assert rel_error(a, b) == pytest.approx(1 / 255, rel=1e-12)  # |-128 + 127| / (128 + 127)
    assert rel_error(b, a) == pytest.approx(1 / 255, rel=1e-12)
    assert rel_error(a, b.astype(np.float64)) == pytest.approx(1 / 255, rel=1e-12)
    assert rel_error(b.astype(np.float64), a) == pytest.approx(1 / 255, rel=1e-12)


# -- numerical_grad ------------------------------------------------------------------------------
C = np.array([1.0, 2.0, -1.0, 4.0, 0.5, -3.0, 2.0, 1.0, -2.0, 1.5])


def quadratic(x):
    """f = sum(C * x^2): gradient 2 C x. Centred differences are exact for a quadratic (up to
    round-off)."""
    return lambda: float(np.sum(C[:x.size].reshape(x.shape) * x**2))


def test_numerical_grad_of_a_quadratic_by_hand():
    x = np.array([[1.0, -2.0], [3.0, 0.5]])
    idx, grads = numerical_grad(quadratic(x), x)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])  # every entry, in flat order
    # 2 C x = [2 * 1 * 1, 2 * 2 * -2, 2 * -1 * 3, 2 * 4 * 0.5]
    np.testing.assert_allclose(grads, [2.0, -8.0, -6.0, 4.0], rtol=1e-8)
    np.testing.assert_array_equal(x, [[1.0, -2.0], [3.0, 0.5]])  # restored


@pytest.mark.parametrize("max_checks", [4, 5, 100])
def test_numerical_grad_checks_everything_when_max_checks_covers_it(max_checks):
    x = np.array([1.0, -2.0, 3.0, 0.5])
    idx, grads = numerical_grad(quadratic(x), x, max_checks=max_checks)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3])
    np.testing.assert_allclose(grads, [2.0, -8.0, -6.0, 4.0], rtol=1e-8)


def test_numerical_grad_samples_distinct_entries_reproducibly():
    x = np.arange(1.0, 11.0)  # 10 entries, 9 checked: drawn with replacement, some would repeat
    idx, grads = numerical_grad(quadratic(x), x, max_checks=9)
    assert len(idx) == 9 and len(set(idx.tolist())) == 9
    # without a generator: default_rng(0), so every call checks the same entries
    np.testing.assert_array_equal(idx, np.random.default_rng(0).choice(10, 9, replace=False))
    again, _ = numerical_grad(quadratic(x), x, max_checks=9)
    np.testing.assert_array_equal(again, idx)
    np.testing.assert_allclose(grads, 2 * C[idx] * x[idx], rtol=1e-8)


def test_numerical_grad_draws_from_the_given_generator():
    x = np.arange(1.0, 11.0)
    idx, grads = numerical_grad(quadratic(x), x, max_checks=4, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(idx, np.random.default_rng(7).choice(10, 4, replace=False))
    np.testing.assert_allclose(grads, 2 * C[idx] * x[idx], rtol=1e-8)


def test_numerical_grad_nudges_a_non_contiguous_view_where_it_lies():
    # A transposed view: reshape(-1) of it would be a copy, and nudging the copy would leave f()
    # unchanged (all-zero gradients). Flat indices are in the view's C order.
    base = np.array([[1.0, -2.0, 3.0], [0.5, 2.0, -1.0]])
    x = base.T  # [[1, 0.5], [-2, 2], [3, -1]]
    assert not x.flags.c_contiguous
    idx, grads = numerical_grad(quadratic(x), x)
    np.testing.assert_array_equal(idx, np.arange(6))
    # 2 C x with C = [1, 2, -1, 4, 0.5, -3] over x in C order [1, 0.5, -2, 2, 3, -1]
    np.testing.assert_allclose(grads, [2.0, 2.0, 4.0, 16.0, 3.0, 6.0], rtol=1e-8)
    np.testing.assert_array_equal(base, [[1.0, -2.0, 3.0], [0.5, 2.0, -1.0]])  # restored
