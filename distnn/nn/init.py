"""Weight initialisation. Every draw comes from the generator passed in: same seed, same model.

Draws are made in float64 and then cast, so a float32 and a float64 model built from the same
seed hold the same values up to the cast.
"""

from __future__ import annotations

import numpy as np

from distnn.nn.errors import SpecError

INITS = ("small", "xavier", "he")


def init_std(method: str, fan_in: int, fan_out: int, where: str) -> float:
    """Standard deviation of a zero-mean normal: small 0.01, Xavier/Glorot, He/Kaiming."""
    if method == "small":
        return 0.01
    if method == "xavier":
        return float(np.sqrt(2.0 / (fan_in + fan_out)))
    if method == "he":
        return float(np.sqrt(2.0 / fan_in))
    raise SpecError(f"{where}: unknown init {method!r}; expected one of {', '.join(INITS)}")


def fill_normal(view: np.ndarray, std: float, rng: np.random.Generator) -> None:
    """Fill `view` in place with N(0, std^2) draws (drawn in float64, then cast)."""
    view[...] = rng.standard_normal(view.shape) * std
