"""Winograd F(4x4, 3x3): 3x3 stride-1 convs on maps large enough and wide enough to pay.

Drives the transforms of distnn/nn/winograd4.py (where the method is explained) chunk by chunk
of images with the drivers of conv/winograd.py (F(2x2, 3x3)), whose subclass it is: a chunk's
transformed tiles stay in cache between a transform and its 36 GEMMs. Any output size fits: a
last row or column of tiles that reaches past the output computes outputs that are dropped (and
take a zero d(out)).
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from distnn.nn import winograd4
from distnn.nn.conv.algorithm import ConvLayer
from distnn.nn.conv.winograd import Winograd


class Winograd4(Winograd):
    name = "winograd4"
    KERNELS: ClassVar[Any] = winograd4
    AREA: ClassVar[int] = 36
    # Winograd tiles (4x4 outputs each) processed at a time: the layers of the cifar net
    # (32->32 at 32x32, 32->64 and 64->64 at 16x16, 64->64 at 8x8), forward + backward at batch
    # 128 on one thread, were 3-5 % faster with 256 than with 64 or 128 and 5-20 % slower with
    # 512 or 1024 (the GEMMs get taller, the work arrays fall out of cache).
    CHUNK_TILES: ClassVar[int] = 256
    # Where it pays (worthwhile): forward + backward (with dx unless said) of one layer at batch
    # 128 on one thread, the algorithm forced, ms as F(4x4) / F(2x2) / direct, C->F at HxW:
    #   32->32@32 72/85/-, 64->64@16 55/68/-, 32->64@16 29/40/-, 64->64@8 12/16/-, 32->32@8
    #   4.5/5.7/-, 32->32@12 11.6/13.6/-: F(4x4) on maps of 8x8 and more, multiples of 4;
    #   4x4 (one tile an image): 16..64 channels 0.7/0.8, 1.7/2.0, 3.6/6.5 but 128->128 22/20,
    #   within the noise of a shared machine: left to F(2x2); ragged (the last tiles computed
    #   past the output) 32->32@6 4.6/3.6, 64->64@6 11.4/9.2, 32->32@14 17.7/17.8: F(2x2);
    #   thin inputs with 32+ filters: 8->32@32 35/-/47, 10->32@16 10/-/15, 16->32@32 47/-/85:
    #   F(4x4); but fewer than 8 channels (an image's: after the direct kernel's speed-ups of
    #   the seed net, as F(4x4)/direct): 1->32@28 first layer 23.5/10.1, 3->32@32 first layer
    #   24.4/18.1, 3->32@32 28.6/23.8, 3->48@32 first layer 34.0/28.7, 4->32@32 28.8/27.6,
    #   6->32@32 35.6/35.2, 3->32@16 7.4/5.9, 3->64@32 49.3/50.6 (a tie): direct; so are
    #   3->16@32 (first layer) 20/-/23, 3->10@32 26/29/16, 10->10@32 36/40/29, 10->10@16
    #   8.8/10/7.6 (min(C, F) < 16, no F(4x4)).
    # In a model: `python -m benchmarks.step_throughput --model cifar --batch 128 --threads 1
    # --profile` (each conv's ms and GFLOP/s).
    MIN_CHANNELS: ClassVar[int] = 16  # channels and filters, or
    MIN_FILTERS: ClassVar[int] = 32  # filters alone, on a thin input of
    MIN_THIN_CHANNELS: ClassVar[int] = 8  # channels at least (fewer: the direct kernel)
    MIN_SIZE: ClassVar[int] = 8  # output height and width, multiples of 4
    x: np.ndarray  # the input, for backward
    u: np.ndarray  # the transformed filters, for backward (the weights do not change between)

    @staticmethod
    def fits(layer: ConvLayer) -> bool:
        """3x3, stride 1, any padding and output size."""
        return layer.kernel == 3 and layer.stride == 1

    @staticmethod
    def worthwhile(layer: ConvLayer) -> bool:
        wide = (min(layer.channels, layer.filters) >= Winograd4.MIN_CHANNELS
                or (layer.filters >= Winograd4.MIN_FILTERS
                    and layer.channels >= Winograd4.MIN_THIN_CHANNELS))
        return (wide and min(layer.ho, layer.wo) >= Winograd4.MIN_SIZE
                and layer.ho % 4 == 0 and layer.wo % 4 == 0)

    @staticmethod
    def _tiles(layer: ConvLayer) -> tuple[int, int]:
        return winograd4.tiles(layer.ho), winograd4.tiles(layer.wo)

    @staticmethod
    def _filters(layer: ConvLayer) -> np.ndarray:
        """The transformed filters U (36, C, F) of the current weights, formed in float64 and
        rounded once (G's thirds and sixths are inexact in float32)."""
        c, f = layer.channels, layer.filters
        u64 = layer.transient("U64", (36, c, f), np.float64)
        w64 = layer.transient("W64", (3, 3, c, f), np.float64)
        w64[...] = layer.p["W"]
        winograd4.filter_transform(w64, u64, winograd4.G,
                                   layer.transient("u_tmp", (6, 3, c * f), np.float64))
        u = layer.buffer("U", (36, c, f))
        u[...] = u64
        return u
