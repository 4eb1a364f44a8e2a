"""L1 regularisation (train.l1) and the elastic net (train.l1 with train.l2): the loss gains
l1 * sum|W| over the decayed weights (conv and dense weights; never biases or BatchNorm's gamma
and beta), their gradients l1 * sign(W), sign(0) = 0. Gradient checks in float64; the penalty
and the gradient term to the bit on weights that are multiples of 1/64 (every sum of them is
exact); the plain step (with and without BatchNorm) and the invariant step against the same
step without L1. The overlapped steps are compared bit for bit in test_overlap.py."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.comm import create_communicator
from distnn.nn import Sequential, numerical_grad, rel_error
from distnn.nn.model import offset_in
from distnn.optim import make_optimizer
from distnn.train.invariant import InvariantStep
from distnn.train.step import EXTRA_SLOTS, DataParallelStep
from distnn.watch import sanity_checks as sc

CONV = {"type": "conv", "filters": 3, "kernel": 3, "pad": 1}
SPEC = [CONV, {"type": "relu"}, {"type": "flatten"}, {"type": "dense", "units": 4}]
BN_SPEC = [CONV, {"type": "batchnorm"}, {"type": "relu"}, {"type": "flatten"},
           {"type": "dense", "units": 4}]
SHAPE = (4, 4, 2)
L1 = 0.25  # a power of two: l1 * sum|W| is exact


def data(n=6, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *SHAPE)).astype(dtype), rng.integers(0, 4, n)


def weights(model):
    """(layer, name) of every decayed weight, and of every other parameter: two lists."""
    decayed = [(layer, name) for layer in model.layers for name in layer.p
               if name in layer.decayed()]
    rest = [(layer, name) for layer in model.layers for name in layer.p
            if name not in layer.decayed()]
    return decayed, rest


def dyadic(model, seed=1):
    """Weights k/64 (k in -8..8, zeros included: sign(0) = 0), other parameters 0.5..1.5."""
    rng = np.random.default_rng(seed)
    decayed, rest = weights(model)
    for layer, name in decayed:
        w = layer.p[name]
        w[...] = rng.integers(-8, 9, w.shape) / 64
        w.flat[0] = 0.0
    for layer, name in rest:
        layer.p[name][...] = np.linspace(0.5, 1.5, layer.p[name].size).reshape(
            layer.p[name].shape)
    return sum(float(np.abs(layer.p[name]).sum()) for layer, name in decayed)  # exact


@pytest.mark.parametrize("l2", [0.0, 0.1], ids=["l1", "elastic"])
@pytest.mark.parametrize("spec", [SPEC, BN_SPEC], ids=["plain", "batchnorm"])
def test_gradient_check_with_l1(spec, l2):
    """Every parameter's gradient against centred differences of data loss + l2/2 |W|^2 +
    l1 |W|, weights at least 0.05 from 0 (|w| is differentiable there)."""
    model = Sequential(spec, SHAPE, seed=4, dtype=np.float64)
    for layer, name in weights(model)[0]:
        w = layer.p[name]
        w[np.abs(w) < 0.05] = 0.05
    x, y = data(3, seed=2)

    def f():
        return model.forward_backward(x, y, l2=l2, l1=0.1)[0]

    f()
    analytic = model.grads.copy()
    idx, num = numerical_grad(f, model.params, max_checks=100, rng=np.random.default_rng(5))
    assert rel_error(analytic[idx], num) < 1e-6


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("denom", [None, 12])
def test_penalty_and_gradient_term_to_the_bit(dtype, denom):
    """loss += l1 * share * sum|W| and grad(W) += l1 * share * sign(W) exactly (share =
    N / denom); biases, gamma and beta untouched, and a zero weight gets nothing."""
    model = Sequential(BN_SPEC, SHAPE, seed=2, dtype=dtype)
    total = dyadic(model)
    assert model.l1_penalty() == total
    x, y = data(dtype=dtype)
    state = model.state.copy()
    plain, _ = model.forward_backward(x, y, denom=denom)
    g0 = model.grads.copy()
    model.state[...] = state  # BatchNorm moved its running statistics: undo
    value, _ = model.forward_backward(x, y, denom=denom, l1=L1)
    coef = L1 * (6 / (denom or 6))
    assert value == plain + coef * total
    decayed, rest = weights(model)
    for layer, name in decayed:
        w, g = layer.p[name], layer.g[name]
        off = offset_in(model.params, w)
        before = g0[off:off + w.size]
        assert np.array_equal(g, before.reshape(w.shape) + dtype(coef) * np.sign(w))
        assert g.flat[0] == before[0]  # sign(0) = 0
    for layer, name in rest:
        off = offset_in(model.params, layer.p[name])
        assert np.array_equal(layer.g[name].reshape(-1), g0[off:off + layer.p[name].size])


def make_step(kind, model, l2, l1):
    comm, sgd = create_communicator("local"), make_optimizer("sgd")
    if kind == "invariant":
        return InvariantStep(model, sgd, comm, l2=l2, groups=3, seed=1, l1=l1)
    return DataParallelStep(model, sgd, comm, l2=l2, seed=1, l1=l1)


@pytest.mark.parametrize("l2", [0.0, 0.5], ids=["l1", "elastic"])
@pytest.mark.parametrize("kind,spec", [("plain", SPEC), ("plain", BN_SPEC),
                                       ("invariant", BN_SPEC)],
                         ids=["plain", "plain-batchnorm", "invariant"])
def test_steps_add_the_l1_term_to_the_step_without_it(kind, spec, l2):
    """A step with l1 reduces the gradient of the same step without it plus l1 * sign(W) on
    the weights, to the bit, and nothing elsewhere; its loss is that step's plus l1 * sum|W|."""
    out = []
    for l1 in (0.0, L1):
        model = Sequential(spec, SHAPE, seed=3, dtype=np.float64, extra_grad_slots=EXTRA_SLOTS)
        total = dyadic(model)
        x, y = data(6)
        res = make_step(kind, model, l2, l1)(x, y, 6, 0.1, False, apply=False)
        out.append((res.loss, model.grads.copy()))
    (loss0, g0), (loss1, g1) = out
    want = g0.copy()
    want[model.decay_mask == 1] += L1 * np.sign(model.params[model.decay_mask == 1])
    assert np.array_equal(g1, want)
    if kind == "plain" and spec is BN_SPEC and l2:  # (data + l2 term) + l1 term: one rounding
        assert loss1 == pytest.approx(loss0 + L1 * total, rel=1e-15)
    else:
        assert loss1 == loss0 + L1 * total


def test_l1_and_l2_zero_leave_the_l2_only_step_as_it_was():
    """l1 = 0 adds nothing: the same bits as a step built without the l1 argument."""
    out = []
    for kwargs in ({}, {"l1": 0.0}):
        model = Sequential(BN_SPEC, SHAPE, seed=3, extra_grad_slots=EXTRA_SLOTS)
        x, y = data(6, dtype=np.float32)
        step = DataParallelStep(model, make_optimizer("sgd"), create_communicator("local"),
                                l2=1e-3, seed=1, **kwargs)
        res = step(x, y, 6, 0.1, False)
        out.append((res.loss, model.params.copy()))
    assert out[0][0] == out[1][0] and np.array_equal(out[0][1], out[1][1])


def test_sanity_regularisation_adds_the_configured_l1():
    """distnn sanity's check 2 with train.l1 > 0: the rise is the L2 and the L1 penalty."""
    model = Sequential(SPEC, SHAPE, seed=3, dtype=np.float64)
    total = dyadic(model)
    x, y = data(6)
    batch = sc.Samples(x, y, np.arange(6))
    data_loss, _ = model.forward_backward(x, y)
    check = sc.regularisation(model, batch, "softmax", 0, 0.0, data_loss, l1=L1)
    assert check.ok and "with l2 0.01 (train.l2 is 0: a clear value) and l1 0.25 (train.l1)" \
        in check.figure
    rise = sc.CLEAR_L2 * model.l2_penalty() + L1 * total
    assert f"{rise:+.4g}" in check.figure
