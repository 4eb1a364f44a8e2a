"""Dense layers on the thread pool: GEMMs cut into pieces along a dimension not summed over."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from distnn.nn import Sequential, threads
from distnn.nn import dense as dense_mod
from distnn.nn.dense import Dense, cuts


@pytest.mark.parametrize("size,work", [(4096, 1 << 30), (256, 1 << 30), (100, 1 << 30),
                                       (4096, 3 << 22), (4096, 1 << 20), (24, 1 << 30)])
def test_cuts_cover_the_dimension_in_few_aligned_pieces(size, work):
    pieces = cuts(size, work)
    assert pieces[0][0] == 0 and pieces[-1][1] == size
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(pieces))
    assert all((b - a) % 16 == 0 for a, b in pieces[:-1]) and all(b > a for a, b in pieces)
    assert len(pieces) <= min(Dense.PIECES, max(1, work // Dense.MIN_WORK))
    if work < 2 * Dense.MIN_WORK or size < 32:
        assert pieces == [(0, size)]  # too little work to cut


def test_the_cifar_layer_is_cut_in_four():
    assert cuts(256, 128 * 4096 * 256) == [(0, 64), (64, 128), (128, 192), (192, 256)]
    assert cuts(4096, 128 * 4096 * 256) == [(i, i + 1024) for i in range(0, 4096, 1024)]


def run(dtype, relu, count, n=128, d=1000, u=150):
    """(out, dW, db, dx) of a dense layer (followed by a fused ReLU if `relu`) on `count`
    threads; 128 x 1000 x 150 makes 4 pieces of u and 4 of d, the last ones shorter."""
    specs = [{"type": "dense", "units": u}] + ([{"type": "relu"}] if relu else [])
    model = Sequential(specs, (d,), seed=1, dtype=dtype, input_grad=True)
    layer = model.layers[0]
    assert layer.fuse_relu == relu
    rng = np.random.default_rng(2)
    model.params[...] = rng.standard_normal(model.params.size)
    x = rng.standard_normal((n, d)).astype(dtype)
    dout = rng.standard_normal((n, u)).astype(dtype)
    with threads.limit(count):
        out = model.forward(x, True).copy()
        dx = model.backward(dout).copy()
    return out, layer.g["W"].copy(), layer.g["b"].copy(), dx, x, layer.p["W"], layer.p["b"], dout


@pytest.mark.parametrize("relu", [False, True])
def test_values_against_numpy_in_float64(relu):
    out, gw, gb, dx, x, w, b, dout = run(np.float64, relu, 2)
    want = x @ w + b
    if relu:
        want = np.maximum(want, 0)
        dout = np.where(want > 0, dout, 0)
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gw, x.T @ dout, rtol=1e-12, atol=1e-11)
    np.testing.assert_allclose(gb, dout.sum(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dout @ w.T, rtol=1e-12, atol=1e-12)


def test_any_thread_count_gives_the_same_bits(monkeypatch):
    tasks = []
    real = threads.run

    def counting(job, todo):
        tasks.append(len(todo))
        real(job, todo)

    monkeypatch.setattr(dense_mod.threads, "run", counting)
    one = run(np.float32, True, 1)
    assert tasks == [4, 4]  # forward in pieces of u, backward in pieces of d
    for count in (2, 3):
        for a, b in zip(run(np.float32, True, count)[:4], one[:4], strict=True):
            np.testing.assert_array_equal(a, b)
