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


def layers_used(model, x, y):
    """Per layer, after a step: the parameter gradients, and the loss."""
    loss, _ = model.forward_backward(x, y)
    return loss, model.grads.copy()


@pytest.mark.parametrize("count", [1, 2])
def test_sharing_changes_no_bit(count):
    """A model whose layers share the workspace computes what one whose layers keep their own
    buffers computes, to the bit, step after step (a later step reuses what the layers after
    wrote into the shared arenas)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6,) + SHAPE).astype(np.float32)
    y = rng.integers(0, 5, 6)
    shared = Sequential(SPECS, SHAPE, seed=3, input_grad=True)
    own = Sequential(SPECS, SHAPE, seed=3, input_grad=True)
    assert [lay.algorithm for lay in shared.layers if lay.kind == "conv"] == \
        ["direct", "winograd4", "winograd4", "winograd", "im2col"]
    for layer in own.layers:
        layer.workspace = None
    with threads.limit(count):
        for _ in range(2):
            for m in (shared, own):
                m.params[...] -= 0.01 * m.grads
            got, want = layers_used(shared, x, y), layers_used(own, x, y)
            assert got[0] == want[0]
            np.testing.assert_array_equal(got[1], want[1])
    assert shared.workspace._arenas and not own.workspace._arenas


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
