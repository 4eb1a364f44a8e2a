"""Winograd F(2x2, 3x3): 3x3 stride-1 convs with an even output, wide enough to pay.

Drives the transforms of distnn/nn/winograd.py (where the method is explained) chunk by chunk of
images, so that the transformed tiles stay in cache between a transform and its 16 GEMMs.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from distnn.nn import kernels, threads, winograd
from distnn.nn.conv import common
from distnn.nn.conv.algorithm import ConvAlgorithm, ConvLayer


class Winograd(ConvAlgorithm):
    name = "winograd"
    # Winograd tiles (2x2 outputs each) processed at a time; measured with
    # `python -m benchmarks.step_throughput --model cifar --batch 128 --threads 1`.
    CHUNK_TILES: ClassVar[int] = 256
    # Below this many input channels or filters the 16 GEMMs are too thin to pay for the
    # transforms: im2col + GEMM is faster (measured with benchmarks/step_throughput.py --profile:
    # 3->32 and 10->10 convs at 32x32 are 25-30 % slower as Winograd, 32->32 is 2x faster).
    MIN_CHANNELS: ClassVar[int] = 16
    # The Numba transforms (distnn/nn/winograd.py) and the number of points of a tile (the
    # batched GEMMs per chunk): F(4x4) (conv/winograd4.py) declares its own, the drivers below
    # are shared.
    KERNELS: ClassVar[Any] = winograd
    AREA: ClassVar[int] = 16
    x: np.ndarray  # the input, for backward
    u: np.ndarray  # the transformed filters, for backward (the weights do not change between)

    @staticmethod
    def fits(layer: ConvLayer) -> bool:
        """The shape F(2x2, 3x3) covers exactly: 3x3, stride 1, even output height and width
        (any padding)."""
        return (layer.kernel == 3 and layer.stride == 1 and layer.ho % 2 == 0
                and layer.wo % 2 == 0)

    @staticmethod
    def worthwhile(layer: ConvLayer) -> bool:
        return min(layer.channels, layer.filters) >= Winograd.MIN_CHANNELS

    @staticmethod
    def _tiles(layer: ConvLayer) -> tuple[int, int]:
        """Tiles down and across an image."""
        return layer.ho // 2, layer.wo // 2

    def _chunk(self, layer: ConvLayer, n: int) -> int:
        """Images per chunk: about CHUNK_TILES tiles (see Im2col._chunk)."""
        th, tw = self._tiles(layer)
        return max(1, min(n, self.CHUNK_TILES // (th * tw)))

    @staticmethod
    def _filters(layer: ConvLayer) -> np.ndarray:
        """The transformed filters U (16, C, F) of the current weights."""
        c, f = layer.channels, layer.filters
        g = layer.buffer("G", (4, 3))
        g[...] = winograd.G
        u = layer.buffer("U", (16, c, f))
        winograd.filter_transform(layer.p["W"], u, g, layer.transient("u_tmp", (4, 3, c * f)))
        return u

    @classmethod
    def _buffers(cls, layer: ConvLayer, step: int,
                 workers: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Per-worker V (AREA, rows, C) and M (AREA, rows, F) for chunks of `step` images."""
        th, tw = cls._tiles(layer)
        rows = winograd.padded_tiles(step * th * tw)
        return (common.per_worker_transient(layer, "V", (cls.AREA, rows, layer.channels),
                                            workers),
                common.per_worker_transient(layer, "M", (cls.AREA, rows, layer.filters),
                                            workers))

    def forward(self, layer: ConvLayer, x: np.ndarray, out: np.ndarray) -> None:
        n, (th, tw), kern = x.shape[0], self._tiles(layer), self.KERNELS
        u = self.u = self._filters(layer)
        step = self._chunk(layer, n)
        chunks = common.chunk_ranges(n, step)
        v, m = self._buffers(layer, step, threads.workers(len(chunks)))

        def job(w: int, i: int) -> None:
            n0, n1 = chunks[i]
            t = (n1 - n0) * th * tw
            # The kernels take the whole (contiguous) buffers and fill the first t tiles.
            kern.input_transform(x[n0:n1], v[w], layer.pad, th, tw)
            np.matmul(v[w][:, :t], u, out=m[w][:, :t])
            kern.output_transform(m[w], out[n0:n1], layer.p["b"], layer.fuse_relu, th, tw)

        threads.run(job, range(len(chunks)))
        self.x = common.kept_input(layer, x)

    def backward(self, layer: ConvLayer, dout: np.ndarray, out: np.ndarray,
                 dx: np.ndarray | None) -> None:
        x, u, c, f, kern = self.x, self.u, layer.channels, layer.filters, self.KERNELS
        n, (th, tw), area = x.shape[0], self._tiles(layer), self.AREA
        dout = np.ascontiguousarray(dout)  # masked in place, chunk by chunk
        step = self._chunk(layer, n)
        chunks = common.chunk_ranges(n, step)
        db_chunks = layer.transient("db_chunks", (len(chunks), f), np.float64)
        groups = threads.groups(len(chunks))
        k = threads.workers(len(groups))
        v, dm = self._buffers(layer, step, k)
        part = common.per_worker_transient(layer, "dU_part", (area, c, f), k)
        dus = layer.transient("dU_groups", (len(groups), area, c, f))

        def work(w: int, n0: int, n1: int, du_chunk: np.ndarray) -> None:
            t = (n1 - n0) * th * tw
            vc, dmc = v[w][:, :t], dm[w][:, :t]
            # The fused ReLU's mask and the chunk's bias gradient (float64 column sums), in
            # one pass over the chunk's d(out), just before the transform reads it.
            kernels.relu_mask_bias_grad_(dout[n0:n1].reshape(-1, f), out[n0:n1].reshape(-1, f),
                                         db_chunks[n0 // step], layer.fuse_relu)
            kern.input_transform(x[n0:n1], v[w], layer.pad, th, tw)
            kern.output_transform_adjoint(dout[n0:n1], dm[w], th, tw)
            np.matmul(vc.transpose(0, 2, 1), dmc, out=du_chunk)
            if dx is not None:  # the chunk's V is used: reuse it for dV
                np.matmul(dmc, u.transpose(0, 2, 1), out=vc)
                kern.input_transform_adjoint(v[w], dx[n0:n1], layer.pad, th, tw)

        common.accumulate(chunks, groups, dus, part, work)
        db = layer.transient("db", (f,), np.float64)
        common.sum_groups(db_chunks, db)  # in chunk order
        layer.g["b"][...] = db
        du = layer.transient("dU", (area, c, f))
        common.sum_groups(dus, du)
        side = kern.G.shape[0]  # points per tile side: 4 or 6
        gt = layer.buffer("GT", (3, side))
        gt[...] = kern.G.T
        kern.filter_transform_adjoint(du, layer.g["W"], gt,
                                      layer.transient("du_tmp", (3, side, c * f)))
