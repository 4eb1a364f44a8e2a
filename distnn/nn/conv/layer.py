"""The Conv2D layer: parameters, shapes, and the algorithm that computes it."""

from __future__ import annotations

import numpy as np

from distnn.nn import kernels
from distnn.nn.base import Layer
from distnn.nn.conv.algorithm import ConvAlgorithm, Handoff
from distnn.nn.conv.direct import Direct
from distnn.nn.conv.im2col import Im2col
from distnn.nn.conv.winograd import Winograd
from distnn.nn.conv.winograd4 import Winograd4
from distnn.nn.errors import ShapeError, SpecError
from distnn.nn.init import fill_normal, init_std

# Tried in this order when a layer is built; the first usable one computes it: F(4x4, 3x3)
# Winograd on maps of 8x8 and more (multiples of 4) with 16+ channels and filters or 32+
# filters (2.25 multiplies per output, channel and filter), F(2x2, 3x3) where it applies and
# pays (4 per output: smaller or other even maps), the direct kernel for thin 3x3 convs, else
# im2col + GEMM (which fits every conv). All compute the same function
# (tests/nn/test_conv_algorithms.py, test_winograd4.py).
ALGORITHMS: tuple[type[ConvAlgorithm], ...] = (Winograd4, Winograd, Direct, Im2col)


class Conv2D(Layer):
    """Convolution with F filters of KH×KW, stride S, zero padding P.

    x: (N, H, W, C) -> out: (N, Ho, Wo, F), Ho = (H - KH + 2P) / S + 1 (must be integral).
    Parameters: W (KH, KW, C, F), b (F,). When followed by a ReLU the model fuses the bias add
    and the activation into one pass (`fuse_relu`).
    """

    kind = "conv"

    def __init__(self, filters: int, kernel: int = 3, stride: int = 1, pad: int = 0,
                 init: str = "he", name: str | None = None):
        super().__init__(name)
        for key, val, low in (("filters", filters, 1), ("kernel", kernel, 1),
                              ("stride", stride, 1), ("pad", pad, 0)):
            if not isinstance(val, (int, np.integer)) or isinstance(val, bool) or val < low:
                raise SpecError(f"{self.name}: {key}={val!r}, expected an integer >= {low}")
        self.filters, self.kernel = int(filters), int(kernel)
        self.stride, self.pad = int(stride), int(pad)
        self.init = init
        self.fuse_relu = False
        # Its neighbours, when a Sequential wires them (Sequential._wire; conv/direct.py).
        self.handoff = Handoff()
        init_std(init, 1, 1, self.name)  # validate the name early

    def _build(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        if len(in_shape) != 3:
            raise ShapeError(f"{self.name}: input per-sample shape {in_shape}, expected (H, W, C)")
        self.height, self.width, self.channels = in_shape
        k, s, p = self.kernel, self.stride, self.pad
        self.ho = kernels.output_size(self.height, k, s, p, f"{self.name} height")
        self.wo = kernels.output_size(self.width, k, s, p, f"{self.name} width")
        self.k2 = k * k * self.channels
        self._algorithm = next(cls for cls in ALGORITHMS if cls.usable(self))()
        return (self.ho, self.wo, self.filters)

    @property
    def algorithm(self) -> str:
        """The name of the algorithm that computes this layer: "winograd", "direct", ..."""
        return self._algorithm.name

    @algorithm.setter
    def algorithm(self, name: str) -> None:
        """Have the algorithm of this name compute the layer from now on (the tests compare
        them); it must fit the layer's shape."""
        fitting = [cls for cls in ALGORITHMS if cls.fits(self)]
        for cls in fitting:
            if cls.name == name:
                self._algorithm = cls()
                return
        raise SpecError(f"{self.name}: algorithm {name!r} for a {self.describe()} with a "
                        f"{self.ho}x{self.wo} output, expected one of "
                        f"{[cls.name for cls in fitting]}")

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"W": (self.kernel, self.kernel, self.channels, self.filters),
                "b": (self.filters,)}

    def decayed(self) -> tuple[str, ...]:
        return ("W",)

    def init_params(self, rng: np.random.Generator) -> None:
        std = init_std(self.init, self.k2, self.kernel * self.kernel * self.filters, self.name)
        fill_normal(self.p["W"], std, rng)
        self.p["b"][...] = 0.0

    def forward(self, x: np.ndarray, training: bool) -> np.ndarray:
        self.check_input(x)
        out = self.buffer("out", (x.shape[0], self.ho, self.wo, self.filters))
        self._algorithm.forward(self, x, out)
        return out

    def backward(self, dout: np.ndarray) -> np.ndarray | None:
        n = dout.shape[0]
        handed = self.handoff.pool_from  # a max pool's d(out), read instead of dout
        reads = (dout,) if handed is None else (dout, handed[1])
        dx = self.input_grad_buffer((n, self.height, self.width, self.channels), *reads) \
            if self.input_grad else None
        self._algorithm.backward(self, dout, self._scratch["out"], dx)
        return dx

    def describe(self) -> str:
        return f"conv {self.kernel}x{self.kernel}/{self.stride} pad {self.pad} -> {self.filters}"
