"""Build a single float64 layer bound to its own parameter arrays, for gradient checks."""

import numpy as np

from distnn.nn import Sequential


def built(spec: dict, in_shape, seed: int = 0, first: bool = False):
    """A float64 layer inside a one-layer model (so its parameters are bound and initialised).

    A dummy leading layer is added unless `first`, so the layer computes its input gradient.
    """
    specs = [spec] if first else [{"type": "dropout", "rate": 0.0}, spec]
    model = Sequential(specs, in_shape, seed=seed, dtype=np.float64)
    layer = model.layers[-1]
    # Non-zero biases, so that errors in bias handling cannot hide behind zeros.
    rng = np.random.default_rng(seed + 1)
    for name, p in layer.p.items():
        if name in ("b", "beta"):
            p[...] = rng.standard_normal(p.shape) * 0.1
    return layer
