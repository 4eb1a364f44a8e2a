"""What a caller sees of Sequential: the summary table, predict's chunking and its empty case,
and the StateError of load_state_dict for extra arrays.

Expected values are written out by hand, never computed by the code under test.
"""

import re

import numpy as np
import pytest

from distnn.nn import Sequential, StateError

# conv0: 3*3*1*2 + 2 = 20 parameters; batchnorm1: gamma, beta of 2 channels = 4; dense4:
# 8*3 + 3 = 27; total 51.
SUMMARY_SPECS = [{"type": "conv", "filters": 2, "kernel": 3, "pad": 1}, {"type": "batchnorm"},
                 {"type": "maxpool", "size": 2}, {"type": "flatten"},
                 {"type": "dense", "units": 3}]
# Columns: name 16 wide, description 34, output shape 18, parameter count right-aligned in 10.
SUMMARY = """\
layer           description                       output                params
input                                             (4, 4, 1)                  0
conv0           conv 3x3/1 pad 1 -> 2             (4, 4, 2)                 20
batchnorm1      batchnorm                         (4, 4, 2)                  4
maxpool2        maxpool 2x2/2                     (2, 2, 2)                  0
flatten3        flatten                           (8,)                       0
dense4          dense -> 3                        (3,)                      27
total                                                                       51"""


def test_summary_is_the_documented_table():
    model = Sequential(SUMMARY_SPECS, (4, 4, 1))
    assert model.summary() == SUMMARY


def test_summary_of_a_vector_model():
    model = Sequential([{"type": "dense", "units": 2, "name": "fc"}, {"type": "tanh"}], (5,))
    # fc: 5*2 + 2 = 12 parameters
    assert model.summary().splitlines() == [
        "layer           description                       output                params",
        "input                                             (5,)                       0",
        "fc              dense -> 2                        (2,)                      12",
        "tanh1           tanh                              (2,)                       0",
        "total                                                                       12",
    ]


def linear_model(dtype=np.float32):
    """scores = x @ W + b with small integer weights: every score is exact in float32, whatever
    the batch the BLAS call sees."""
    model = Sequential([{"type": "dense", "units": 3}], (2,), dtype=dtype)
    dense = model.layers[0]
    dense.p["W"][...] = [[1, 0, 2], [0, 1, -1]]
    dense.p["b"][...] = [0.5, 0, -1]
    return model


def spy_on_forward(model):
    """Record (rows, training) of every model.forward call."""
    calls = []
    real = model.forward

    def forward(x, training=True):
        calls.append((len(x), training))
        return real(x, training)

    model.forward = forward
    return calls


def expected_scores(n):
    # row i of x is [i, 2i]: x @ W = [i, 2i, 2i - 2i] = [i, 2i, 0]; + b = [i + .5, 2i, -1]
    i = np.arange(n, dtype=np.float64)
    return np.stack([i + 0.5, 2 * i, np.full(n, -1.0)], axis=1)


def inputs(n, dtype=np.float32):
    i = np.arange(n, dtype=np.float64)
    return np.stack([i, 2 * i], axis=1).astype(dtype)


def test_predict_runs_in_chunks_of_256_by_default_in_eval_mode():
    model = linear_model()
    calls = spy_on_forward(model)
    out = model.predict(inputs(300))
    assert calls == [(256, False), (44, False)]  # 300 = 256 + 44, each in evaluation mode
    assert all(training is False for _, training in calls)
    assert out.dtype == np.float32 and out.shape == (300, 3)
    np.testing.assert_array_equal(out, expected_scores(300))


@pytest.mark.parametrize("n,batch,chunks", [(20, 7, [7, 7, 6]), (5, 5, [5]), (3, 10, [3]),
                                            (10, 1, [1] * 10)])
def test_predict_batch_that_does_not_divide_n(n, batch, chunks):
    model = linear_model()
    calls = spy_on_forward(model)
    out = model.predict(inputs(n), batch=batch)
    assert [rows for rows, _ in calls] == chunks
    np.testing.assert_array_equal(out, expected_scores(n))  # every row, in order


def test_predict_returns_a_new_array_not_the_work_buffer():
    model = linear_model()
    a = model.predict(inputs(4), batch=4)
    model.predict(inputs(4) + 100, batch=4)  # reuses the layer's work buffer
    np.testing.assert_array_equal(a, expected_scores(4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_predict_on_no_samples(dtype):
    model = linear_model(dtype)
    calls = spy_on_forward(model)
    out = model.predict(np.zeros((0, 2), dtype))
    assert calls == []
    assert out.shape == (0, 3) and out.dtype == dtype
    image = Sequential([{"type": "conv", "filters": 2, "pad": 1}], (3, 3, 1), dtype=dtype)
    out = image.predict(np.zeros((0, 3, 3, 1), dtype))
    assert out.shape == (0, 3, 3, 2) and out.dtype == dtype


def test_load_state_dict_names_unexpected_arrays():
    model = linear_model()
    state = model.state_dict()
    assert sorted(state) == ["dense0.W", "dense0.b"]
    state["dense9.W"] = np.zeros((2, 3), np.float32)
    before = model.params.copy()
    message = "model state: missing arrays [], unexpected arrays ['dense9.W']"
    with pytest.raises(StateError, match=f"^{re.escape(message)}$"):
        model.load_state_dict(state)
    np.testing.assert_array_equal(model.params, before)  # nothing was copied in
    del state["dense0.b"]
    message = "model state: missing arrays ['dense0.b'], unexpected arrays ['dense9.W']"
    with pytest.raises(StateError, match=f"^{re.escape(message)}$"):
        model.load_state_dict(state)
