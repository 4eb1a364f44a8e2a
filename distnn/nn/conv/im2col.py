"""im2col + GEMM: any kernel, stride and padding (the algorithm of last resort).

Each chunk of images is unrolled into a (rows, KH*KW*C) matrix of columns (Numba, kernels.py)
and multiplied by the (KH*KW*C, F) weights (BLAS).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from distnn.nn import kernels, threads
from distnn.nn.conv import common
from distnn.nn.conv.algorithm import ConvAlgorithm, ConvLayer


class Im2col(ConvAlgorithm):
    name = "im2col"
    # Rows of the im2col matrix processed at a time (see _chunk); measured with
    # `python -m benchmarks.step_throughput --model cifar --batch 128 --threads 1`.
    CHUNK_ROWS: ClassVar[int] = 1024
    x: np.ndarray  # the input, for backward

    @staticmethod
    def fits(layer: ConvLayer) -> bool:
        return True

    def _chunk(self, layer: ConvLayer, n: int) -> int:
        """Images per chunk: about CHUNK_ROWS rows of im2col, so that a chunk's columns stay in
        cache between im2col and its GEMMs instead of streaming a batch-sized matrix (151 MB
        for a 32x32x32 conv at batch 128) through memory several times per step."""
        return max(1, min(n, self.CHUNK_ROWS // (layer.ho * layer.wo)))

    def _im2col(self, layer: ConvLayer, x: np.ndarray, cols: np.ndarray) -> None:
        kernels.im2col(x, cols, layer.kernel, layer.kernel, layer.stride, layer.pad, layer.ho,
                       layer.wo)

    def forward(self, layer: ConvLayer, x: np.ndarray, out: np.ndarray) -> None:
        n, f, hw = x.shape[0], layer.filters, layer.ho * layer.wo
        out2d = out.reshape(n * hw, f)
        w2d, b = layer.p["W"].reshape(layer.k2, f), layer.p["b"]
        step = self._chunk(layer, n)
        chunks = common.chunk_ranges(n, step)
        cols = common.per_worker_transient(layer, "cols", (step * hw, layer.k2),
                                           threads.workers(len(chunks)))

        def job(w: int, i: int) -> None:
            n0, n1 = chunks[i]
            c, o = cols[w][:(n1 - n0) * hw], out2d[n0 * hw:n1 * hw]
            self._im2col(layer, x[n0:n1], c)
            np.matmul(c, w2d, out=o)
            kernels.bias_relu_(o, b, layer.fuse_relu)

        threads.run(job, range(len(chunks)))
        self.x = common.kept_input(layer, x)

    def backward(self, layer: ConvLayer, dout: np.ndarray, out: np.ndarray,
                 dx: np.ndarray | None) -> None:
        x, f, hw = self.x, layer.filters, layer.ho * layer.wo
        n = x.shape[0]
        dout2d = common.bias_grad(layer, dout, out)
        w2d = layer.p["W"].reshape(layer.k2, f)
        step = self._chunk(layer, n)
        chunks = common.chunk_ranges(n, step)
        groups = threads.groups(len(chunks))
        k = threads.workers(len(groups))
        cols = common.per_worker_transient(layer, "cols", (step * hw, layer.k2), k)
        part = common.per_worker_transient(layer, "gw_part", (layer.k2, f), k)
        gws = layer.transient("gw_groups", (len(groups), layer.k2, f))

        def work(w: int, n0: int, n1: int, gw_chunk: np.ndarray) -> None:
            c, d = cols[w][:(n1 - n0) * hw], dout2d[n0 * hw:n1 * hw]
            self._im2col(layer, x[n0:n1], c)
            np.matmul(c.T, d, out=gw_chunk)
            if dx is not None:  # the chunk's columns are used: reuse them for d(cols)
                np.matmul(d, w2d.T, out=c)
                kernels.col2im(c, dx[n0:n1], layer.kernel, layer.kernel, layer.stride,
                               layer.pad, layer.ho, layer.wo)

        common.accumulate(chunks, groups, gws, part, work)
        common.sum_groups(gws, layer.g["W"].reshape(layer.k2, f))
