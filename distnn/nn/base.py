"""The Layer base class: shape bookkeeping, parameter views and reusable work buffers.

A layer is built once for a per-sample input shape (`(H, W, C)` for image maps, `(D,)` for
vectors) and a dtype. The owning model then binds its parameters and their gradients as views into
the model's flat buffers (`self.p[name]`, `self.g[name]`), and its non-trained state (BatchNorm
running statistics) into a third flat buffer (`self.s[name]`).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import DTypeLike

from distnn.nn.errors import ShapeError


def is_number(value: object) -> bool:
    """A real number from a spec (int or float, not a bool): checked before comparing it."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)


class Layer:
    """Base class. Subclasses set `kind` and implement `_build`, `forward` and `backward`."""

    kind = "layer"

    def __init__(self, name: str | None = None) -> None:
        self.name = name or self.kind
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self.dtype: np.dtype = np.dtype(np.float32)
        self.input_grad = True  # False on the first layer: nobody needs d(loss)/d(images)
        self.frozen = False  # never updated; runs in evaluation mode (Sequential.freeze)
        self.p: dict[str, np.ndarray] = {}
        self.g: dict[str, np.ndarray] = {}
        self.s: dict[str, np.ndarray] = {}
        self._scratch: dict[str, np.ndarray] = {}

    # -- construction -------------------------------------------------------------------------
    def build(self, in_shape: tuple[int, ...], dtype: DTypeLike = np.float32) -> tuple[int, ...]:
        """Fix the per-sample input shape and dtype; return the per-sample output shape."""
        self.in_shape = tuple(int(d) for d in in_shape)
        self.dtype = np.dtype(dtype)
        self.out_shape = tuple(int(d) for d in self._build(self.in_shape))
        return self.out_shape

    def _build(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Check the per-sample input shape; return the per-sample output shape."""
        return in_shape

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """Trained parameters, in a fixed order."""
        return {}

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Non-trained state saved with the model (e.g. BatchNorm running statistics)."""
        return {}

    def decayed(self) -> tuple[str, ...]:
        """Names of parameters that L2 weight decay applies to (weights, never biases or BN)."""
        return ()

    def init_params(self, rng: np.random.Generator) -> None:
        """Fill the bound parameter and state views. Draws only from `rng`."""

    # -- helpers ------------------------------------------------------------------------------
    def check_input(self, x: np.ndarray) -> None:
        """One clear error when x is not (N,) + in_shape of this layer's dtype."""
        if not isinstance(x, np.ndarray) or x.dtype != self.dtype:
            got = getattr(x, "dtype", type(x).__name__)
            raise ShapeError(f"{self.name}: input dtype {got}, expected {self.dtype}")
        if x.shape[1:] != self.in_shape:
            raise ShapeError(
                f"{self.name}: input shape {x.shape}, expected (N,) + {self.in_shape}"
            )

    def buffer(self, key: str, shape: tuple[int, ...], dtype: DTypeLike | None = None,
               zero: bool = False) -> np.ndarray:
        """A work buffer reused across steps while the shape stays the same (no per-step malloc).
        With `zero`, a newly allocated buffer starts zeroed (for kernels that never write some
        of it, such as padding); a reused one is returned as the last step left it."""
        dtype = self.dtype if dtype is None else np.dtype(dtype)
        buf = self._scratch.get(key)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = (np.zeros if zero else np.empty)(shape, dtype=dtype)
            self._scratch[key] = buf
        return buf

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind
