"""What a Conv2D algorithm is: the interface each one implements, and what it may use of its layer.

An algorithm computes a conv layer's forward pass and gradients in its own way. Conv2D asks
the classes in ALGORITHMS (conv/layer.py) in order, when it is built, and keeps an instance of
the first one usable for its shape. Work buffers live in the layer (`layer.buffer(key, ...)`,
reused from step to step); the instance keeps only what its forward pass leaves for backward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Protocol

import numpy as np
from numpy.typing import DTypeLike

from distnn.nn.base import Layer


class ConvLayer(Protocol):
    """What an algorithm uses of its layer (a built Conv2D, which imports the algorithms)."""

    kernel: int
    stride: int
    pad: int
    filters: int
    height: int  # of the input
    width: int
    channels: int
    ho: int  # output height
    wo: int
    k2: int  # kernel * kernel * channels
    fuse_relu: bool
    input_grad: bool
    p: dict[str, np.ndarray]
    g: dict[str, np.ndarray]
    handoff: Handoff
    algorithm: str

    def buffer(self, key: str, shape: tuple[int, ...], dtype: DTypeLike | None = None,
               zero: bool = False) -> np.ndarray: ...

    def transient(self, key: str, shape: tuple[int, ...],
                  dtype: DTypeLike | None = None) -> np.ndarray: ...


@dataclass
class Handoff:
    """A conv layer's links to its neighbours (set by Sequential) and what is handed over
    between them (the direct form uses it: conv/direct.py)."""

    after: ConvLayer | None = None  # the conv right after this one (through a fused ReLU)
    before: ConvLayer | None = None  # the conv right before
    wired: bool = False  # inside Sequential.backward: the input gradient may go to `before`
    planar_from: np.ndarray | None = None  # the planar input holds this x already
    dz_from: np.ndarray | None = None  # dz_in holds this d(out) (masked, planar)
    pool_after: Layer | None = None  # the 2x2/2 max pool right after (through a fused ReLU)
    pool_from: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None  # (the
    # pool's unwritten dx, its d(out), its window positions, its output)
    pooled_from: np.ndarray | None = None  # the pool's output holds the pool of this output
    skip_out: bool = False  # inside Sequential.forward: a conv that hands on need not write out
    planar_gen: int = 0  # counts the writes of the planar input (by the layer or the one before)
    out_in: tuple[np.ndarray | None, int] | None = None  # out was not written: it is in this
    # planar input of the next conv while that one's planar_gen is this (None: it is to be
    # computed again from this layer's planar input while its own planar_gen is this)


class ConvAlgorithm(ABC):
    """One way to compute a Conv2D. `fits`, `worthwhile` and `usable` take a built layer and
    are asked of the class."""

    name: ClassVar[str]  # what layer.algorithm says

    @staticmethod
    @abstractmethod
    def fits(layer: ConvLayer) -> bool:
        """Whether it computes this layer's convolution at all."""

    @staticmethod
    def worthwhile(layer: ConvLayer) -> bool:
        """Whether it is expected to beat the algorithms after it in ALGORITHMS (measured)."""
        return True

    @classmethod
    def usable(cls, layer: ConvLayer) -> bool:
        """Whether the layer may pick it: it fits, and pays."""
        return cls.fits(layer) and cls.worthwhile(layer)

    @abstractmethod
    def forward(self, layer: ConvLayer, x: np.ndarray, out: np.ndarray) -> None:
        """out (N, Ho, Wo, F) = conv(x (N, H, W, C)) + b, then ReLU if layer.fuse_relu."""

    @abstractmethod
    def backward(self, layer: ConvLayer, dout: np.ndarray, out: np.ndarray,
                 dx: np.ndarray | None) -> None:
        """layer.g["W"], layer.g["b"] and, unless dx is None, dx (N, H, W, C) from dout =
        d(loss)/d(out) (which may be overwritten); out: what forward wrote there (the fused
        ReLU's mask)."""
