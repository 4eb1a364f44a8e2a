"""The model's Workspace: transient work buffers shared by its layers (nn/base.py)."""

from __future__ import annotations

import numpy as np
import pytest

from distnn.nn import Sequential, threads
from distnn.nn.base import Workspace

# Convs of every algorithm that draws transient buffers, of growing and shrinking sizes, so a
# later layer reuses (and a larger one grows) what an earlier one used.
SPECS = [
    {"type": "conv", "filters": 16, "kernel": 3, "pad": 1},  # 12x12x3: direct
    {"type": "relu"},
    {"type": "conv", "filters": 32, "kernel": 3, "pad": 1},  # 16 -> 32 at 12x12: F(4x4)
    {"type": "relu"},
    {"type": "conv", "filters": 16, "kernel": 3, "pad": 1},  # 32 -> 16 at 12x12: F(4x4)
    {"type": "maxpool", "size": 2},
    {"type": "conv", "filters": 32, "kernel": 3, "pad": 1},  # 6x6: F(2x2)
    {"type": "conv", "filters": 16, "kernel": 2, "stride": 2},  # im2col
    {"type": "flatten"},
    {"type": "dense", "units": 5},
]
SHAPE = (12, 12, 3)
# The seed net's form: direct convs that hand each other planar data and compute the max pool
# after them (their input gradients and the pool's d(out) go to the layer before directly).
SEED = [{"type": "conv", "filters": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "conv", "filters": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "size": 2},
        {"type": "conv", "filters": 8, "kernel": 3, "pad": 1}, {"type": "relu"},
        {"type": "maxpool", "size": 2}, {"type": "flatten"}, {"type": "dense", "units": 5}]


def test_get_hands_out_one_view_per_shape_and_grows_to_the_largest():
    ws = Workspace()
    f32 = np.dtype(np.float32)
    a = ws.get("V0", (2, 3), f32)
    assert ws.get("V0", (2, 3), f32) is a
    b = ws.get("V0", (4, 5), f32)  # larger: a new arena, the old views dropped
    assert b.shape == (4, 5) and not np.shares_memory(a, b)
    c = ws.get("V0", (2, 3), f32)  # smaller: a view of the large arena
    assert c is not a and np.shares_memory(b, c) and ws.get("V0", (4, 5), f32) is b
    d = ws.get("V0", (2, 3), np.dtype(np.float64))  # another dtype: an arena of its own
    assert d.dtype == np.float64 and not np.shares_memory(c, d)
    assert not np.shares_memory(ws.get("M0", (2, 3), f32), c)  # another key: its own


def test_input_grad_takes_an_arena_none_of_the_reads_lies_in():
    ws = Workspace()
    f32 = np.dtype(np.float32)
    ws.reserve_input_grads(40, f32)
    a = ws.input_grad((2, 20), f32, (np.zeros(3, np.float32),))  # reads elsewhere: the first
    assert np.shares_memory(a, ws._arenas[("dx_a", f32)])
    b = ws.input_grad((4, 5), f32, (a[:1],))
    assert np.shares_memory(b, ws._arenas[("dx_b", f32)])
    assert np.shares_memory(ws.input_grad((4, 5), f32, (b,)), a)  # back to the first
    c = ws.input_grad((3,), f32, (a, b[1:]))  # reads in both: a third arena
    assert not np.shares_memory(c, a) and not np.shares_memory(c, b)


def step(model, x, dscores):
    """The scores, the parameter gradients and the input gradient of one step."""
    scores = model.forward(x, True).copy()
    dx = model.backward(dscores)
    return scores, model.grads.copy(), dx.copy()


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("specs,algorithms", [
    (SPECS, ["direct", "winograd4", "winograd4", "winograd", "im2col"]),
    (SEED, ["direct"] * 3)])
def test_sharing_changes_no_bit(count, specs, algorithms):
    """A model whose layers share the workspace computes what one whose layers keep their own
    buffers computes, to the bit, step after step (a later step reuses what the layers after
    wrote into the shared arenas), the input gradients included."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + SHAPE).astype(np.float32)
    shared = Sequential(specs, SHAPE, seed=3, input_grad=True)
    own = Sequential(specs, SHAPE, seed=3, input_grad=True)
    assert [lay.algorithm for lay in shared.layers if lay.kind == "conv"] == algorithms
    for layer in own.layers:
        layer.workspace = None
    with threads.limit(count):
        for i in range(3):
            dscores = rng.standard_normal((6, 5)).astype(np.float32)
            for m in (shared, own):
                m.params[...] -= 0.01 * m.grads
            got, want = step(shared, x + i, dscores), step(own, x + i, dscores)
            for a, b in zip(got, want, strict=True):
                np.testing.assert_array_equal(a, b)
    assert {k for k, _ in shared.workspace._arenas} >= {"dx_a", "dx_b"}
    assert {k for k, _ in own.workspace._arenas} == {"dx_a", "dx_b"}  # reserved, unused
    assert any("dx" in lay._scratch for lay in own.layers)


def test_input_gradients_take_turns_in_two_arenas():
    """Each layer's input gradient lies in an arena other than the one it read its d(out)
    from; both are reserved at n x the widest layer input before the first layer asks."""
    model = Sequential(SPECS, SHAPE, seed=0, input_grad=True)
    x = np.ones((6,) + SHAPE, np.float32)
    model.forward(x, True)
    seen = []
    for layer in model.layers:
        real = layer.backward

        def spy(dout, real=real, layer=layer):
            dx = real(dout)
            seen.append((layer.name, dout, dx))
            return dx

        layer.backward = spy
    model.backward(np.ones((6, 5), np.float32))
    f32 = np.dtype(np.float32)
    arenas = {k: v for k, v in model.workspace._arenas.items() if k[0].startswith("dx_")}
    assert sorted(arenas) == [("dx_a", f32), ("dx_b", f32)]
    widest = max(int(np.prod(lay.in_shape)) for lay in model.layers)
    assert widest == 12 * 12 * 32 and all(a.size == 6 * widest for a in arenas.values())
    writers = [(name, dout, dx) for name, dout, dx in seen if dx is not dout
               and not (dx.base is not None and dx.base is dout.base)]  # not passed on
    assert [name for name, _, _ in writers] == \
        ["dense9", "conv7", "conv6", "maxpool5", "conv4", "conv2", "conv0"]
    for name, dout, dx in writers:
        (inside,) = [k for k, a in arenas.items() if np.shares_memory(a, dx)]
        assert not np.shares_memory(arenas[inside], dout), name
    assert not any("dx" in lay._scratch for lay in model.layers)


def test_arenas_are_as_large_as_the_largest_layer_needs():
    model = Sequential(SPECS, SHAPE, seed=0)
    x = np.zeros((6,) + SHAPE, np.float32)
    y = np.zeros(6, np.int64)
    model.forward_backward(x, y)
    f32 = np.dtype(np.float32)
    # V holds a chunk's transformed input tiles (AREA, rows, C): the largest is F(4x4)'s of the
    # 32-channel input; the F(2x2) layer's smaller one is a view of the same arena.
    winograd4 = [lay for lay in model.layers if getattr(lay, "algorithm", "") == "winograd4"]
    sizes = [lay._algorithm._buffers(lay, 6, 1)[0][0].size for lay in winograd4]
    assert model.workspace._arenas[("V0", f32)].size == max(sizes)
    assert not any(k.startswith(("V", "M", "dU")) for lay in model.layers for k in lay._scratch)


def test_a_steady_state_allocates_nothing():
    model = Sequential(SPECS, SHAPE, seed=0)
    x = np.random.default_rng(1).standard_normal((6,) + SHAPE).astype(np.float32)
    y = np.arange(6) % 5

    def ids():
        return ({k: id(v) for k, v in model.workspace._arenas.items()},
                {k: id(v) for k, v in model.workspace._views.items()},
                {(i, k): id(v) for i, lay in enumerate(model.layers)
                 for k, v in lay._scratch.items()})

    model.forward_backward(x, y)
    first = ids()
    model.forward_backward(x, y)  # views of arenas that grew in the first step: made again
    second = ids()
    assert second[0] == first[0] and second[2] == first[2]
    model.forward_backward(x, y)
    assert ids() == second
