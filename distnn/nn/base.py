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


GRAD_ARENAS = ("dx_a", "dx_b", "dx_c")


class Workspace:
    """Memory the layers of one model share for work buffers that live only within one forward
    or backward call of a layer (`Layer.transient`): the layers run one after another, so one
    arena per key, as large as the largest layer's buffer, serves them all (the cifar net's
    Winograd scratch: 17 MB instead of 35). A view is made once per shape and handed out again
    (the same object, as `Layer.buffer` does), so a steady state allocates nothing."""

    def __init__(self) -> None:
        self._arenas: dict[tuple[str, np.dtype], np.ndarray] = {}
        self._views: dict[tuple[str, tuple[int, ...], np.dtype], np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        view = self._views.get((key, shape, dtype))
        if view is not None:
            return view
        size = int(np.prod(shape))
        arena = self._arenas.get((key, dtype))
        if arena is None or arena.size < size:  # grow: views of the old arena are dropped
            arena = self._arenas[(key, dtype)] = np.empty(size, dtype)
            self._views = {k: v for k, v in self._views.items() if k[0] != key or k[2] != dtype}
        view = self._views[(key, shape, dtype)] = arena[:size].reshape(shape)
        return view

    def reserve_input_grads(self, size: int, dtype: np.dtype) -> None:
        """Make the two input-gradient arenas `size` elements large before a backward pass
        asks for them: grown layer by layer instead, each would be allocated and freed
        several times in the first pass, and the freed memory stay in the process (glibc
        raises its mmap threshold on the first free; measured: 9 MB of peak RSS more on
        the cifar net)."""
        for key in GRAD_ARENAS[:2]:
            arena = self._arenas.get((key, dtype))
            if arena is None or arena.size < size:
                self.get(key, (size,), dtype)

    def input_grad(self, shape: tuple[int, ...], dtype: np.dtype,
                   reads: tuple[np.ndarray, ...]) -> np.ndarray:
        """A buffer for a layer's input gradient, in an arena that none of `reads` lies in.
        In a backward pass a layer reads the input gradient of the layer after it (through
        layers that pass it on) and writes its own, which only the layer before it reads: two
        arenas used in turn hold them all (the cifar net: 34 MB instead of 57). A third is
        made only if `reads` lie in both."""
        for key in GRAD_ARENAS:
            arena = self._arenas.get((key, dtype))
            if arena is None or not any(np.may_share_memory(arena, r) for r in reads):
                return self.get(key, shape, dtype)
        raise AssertionError(f"reads {len(reads)} arrays in all of {GRAD_ARENAS}")


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
        self.workspace: Workspace | None = None  # the model's, once a Sequential owns the layer

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

    def transient(self, key: str, shape: tuple[int, ...],
                  dtype: DTypeLike | None = None) -> np.ndarray:
        """A work buffer whose contents are needed only within the current forward or backward
        call of this layer (never kept for the next one, never zeroed): from the model's
        Workspace, shared with its other layers, or a buffer of this layer's own."""
        if self.workspace is None:
            return self.buffer(key, shape, dtype)
        return self.workspace.get(key, shape, self.dtype if dtype is None else np.dtype(dtype))

    def input_grad_buffer(self, shape: tuple[int, ...], *reads: np.ndarray) -> np.ndarray:
        """Where backward writes the input gradient it returns: valid until the model's next
        backward pass reaches the layer before (which reads it). `reads`: every array this
        backward reads that a layer after it wrote (its d(out), anything handed over), so
        that the buffer lies in none of them (Workspace.input_grad)."""
        if self.workspace is None:
            return self.buffer("dx", shape)
        return self.workspace.input_grad(shape, self.dtype, reads)

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        raise NotImplementedError

    def describe(self) -> str:
        return self.kind
