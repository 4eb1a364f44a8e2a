"""The direct form: thin 3x3 stride-1 convs (few channels or few filters), padding 0 to 2.

Drives the kernels of distnn/nn/direct.py (where the method is explained) one image at a time,
in groups of images on the thread pool.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from distnn.nn import direct, threads
from distnn.nn.conv import common
from distnn.nn.conv.algorithm import ConvAlgorithm, ConvLayer


class Direct(ConvAlgorithm):
    name = "direct"
    # Below this many channels or filters a 3x3 stride-1 conv runs here instead of as im2col +
    # GEMM (measured with `python -m benchmarks.step_throughput --model seed --profile`).
    MAX_THIN: ClassVar[int] = 16
    planar: np.ndarray  # the zero-padded planar input, for backward (the kernels keep it)

    @staticmethod
    def fits(layer: ConvLayer) -> bool:
        """3x3, stride 1, padding 0, 1 or 2 (so that the input gradient's padding 2 - pad is
        not negative)."""
        return layer.kernel == 3 and layer.stride == 1 and 0 <= layer.pad <= 2

    @staticmethod
    def worthwhile(layer: ConvLayer) -> bool:
        return min(layer.channels, layer.filters) < Direct.MAX_THIN

    @staticmethod
    def _shapes(layer: ConvLayer, n: int) -> dict[str, tuple[int, ...]]:
        in_shape = (layer.height, layer.width, layer.channels)
        return direct.buffer_shapes(n, in_shape, layer.filters, layer.pad)

    def forward(self, layer: ConvLayer, x: np.ndarray, out: np.ndarray) -> None:
        x = np.ascontiguousarray(x)  # the kernels walk flattened rows
        n, c, f = x.shape[0], layer.channels, layer.filters
        wf = layer.buffer("Wf", (c, 3, 3, f))
        wf[...] = layer.p["W"].transpose(2, 0, 1, 3)
        shapes = self._shapes(layer, n)
        # The kernels never write the zero padding of planar (and dz).
        planar = self.planar = layer.buffer("planar", shapes["planar"], zero=True)
        groups = threads.groups(n)  # chunks of one image
        k = threads.workers(len(groups))
        even = common.per_worker(layer, "o_even", shapes["o_even"], k)
        odd = common.per_worker(layer, "o_odd", shapes["o_odd"], k)

        def job(w: int, g: int) -> None:
            n0, n1 = groups[g]
            direct.forward(x[n0:n1], wf, layer.p["b"], out[n0:n1], layer.fuse_relu, layer.pad,
                           planar[n0:n1], even[w], odd[w])

        threads.run(job, range(len(groups)))

    def backward(self, layer: ConvLayer, dout: np.ndarray, out: np.ndarray,
                 dx: np.ndarray | None) -> None:
        """(Masks the fused ReLU and sums the bias gradient in its own kernel.)"""
        dout = np.ascontiguousarray(dout)
        n, c, f = dout.shape[0], layer.channels, layer.filters
        wb = layer.buffer("Wb", (f, 3, 3, c))  # flipped in space, channels <-> filters
        wb[...] = layer.p["W"][::-1, ::-1].transpose(3, 0, 1, 2)
        # The kernel takes an array either way.
        dxa = layer.buffer("dx_unused", (0, layer.height, layer.width, c)) if dx is None else dx
        shapes = self._shapes(layer, n)
        planar = self.planar
        groups = threads.groups(n)
        k = threads.workers(len(groups))
        dz = common.per_worker(layer, "dz", shapes["dz"], k, zero=True)
        even = common.per_worker(layer, "ox_even", shapes["ox_even"], k)
        odd = common.per_worker(layer, "ox_odd", shapes["ox_odd"], k)
        dws = layer.buffer("dW_groups", (len(groups), c, 3, 3, f))
        dbs = layer.buffer("db_groups", (len(groups), f))

        def job(w: int, g: int) -> None:
            n0, n1 = groups[g]
            direct.backward(planar[n0:n1], dout[n0:n1], out[n0:n1], layer.fuse_relu, wb, dws[g],
                            dbs[g], dxa[n0:n1], dx is not None, layer.pad, dz[w], even[w],
                            odd[w])

        threads.run(job, range(len(groups)))
        dw = layer.buffer("dWf", (c, 3, 3, f))
        common.sum_groups(dws, dw)
        common.sum_groups(dbs, layer.g["b"])
        layer.g["W"][...] = dw.transpose(1, 2, 0, 3)
