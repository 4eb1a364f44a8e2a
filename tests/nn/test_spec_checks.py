"""Layer specs are checked before any array exists: names, value ranges, sizes."""

from __future__ import annotations

import pytest

from distnn.nn import Sequential, SpecError, build_layers
from distnn.nn.registry import MAX_ELEMENTS

DENSE = {"type": "dense", "units": 3}


@pytest.mark.parametrize("specs,match", [
    ([], r"expected a non-empty list of layer specs"),
    ([dict(DENSE, name="a"), dict(DENSE, name="a")],
     r"layer 1: name 'a' is already the name of layer 0"),
    ([dict(DENSE, name="dense1"), DENSE], r"layer 1: name 'dense1' is already"),  # the default
    ([dict(DENSE, name="a/b")], r"layer 0 \(dense\): name='a/b', expected letters"),
    ([dict(DENSE, name=5)], r"name=5, expected"),
    ([dict(DENSE, name="")], r"name='', expected"),
    ([{"type": "leaky_relu", "alpha": float("nan")}], r"alpha=nan, expected a finite number"),
    ([{"type": "elu", "alpha": float("inf")}], r"alpha=inf, expected a finite number"),
    ([{"type": "batchnorm", "eps": float("inf")}], r"eps=inf, expected a finite number > 0"),
    ([{"type": "batchnorm", "eps": float("nan")}], r"eps=nan, expected a finite number > 0"),
    ([{"type": "dropout", "rate": float("nan")}], r"rate=nan, expected a number in \[0, 1\)"),
])
def test_specs_refused_without_an_input_shape(specs, match):
    with pytest.raises(SpecError, match=match):
        build_layers(specs)


def test_absurd_sizes_are_refused_before_allocating():
    with pytest.raises(SpecError, match=rf"dense0: 300000000 parameters up to this layer, "
                                        rf"expected at most {MAX_ELEMENTS}"):
        Sequential([{"type": "dense", "units": 10**8}], (2,))
    with pytest.raises(SpecError, match=r"conv0: output shape \(200006, 200006, 2\) holds"):
        Sequential([{"type": "conv", "filters": 2, "kernel": 3, "pad": 10**5}], (8, 8, 1))


def test_valid_names_build():
    model = Sequential([dict(DENSE, name="fc_1-a"), {"type": "relu"}, dict(DENSE, name="out")],
                       (4,))
    assert [layer.name for layer in model.layers] == ["fc_1-a", "relu1", "out"]
