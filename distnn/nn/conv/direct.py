"""The direct form: thin 3x3 stride-1 convs (few channels or few filters), padding 0 to 2.

Drives the kernels of distnn/nn/direct.py (where the method is explained) one image at a time,
in groups of images on the thread pool.

Handing on between neighbours (linked by Sequential._wire, the links in `layer.handoff`):
moving data between NHWC and the kernels' planar rows costs about as much as the arithmetic of
a 10-channel conv, so

- a direct conv followed (through its fused ReLU) by a direct conv with padding 1 also writes
  that conv's padded planar input (rows of the same width) in its output pass, and the next
  one skips its own move when the x it gets is that output (the `planar_from` stamp). Inside
  Sequential.forward (`skip_out`) the first one does not write its NHWC output at all: only
  the next conv reads it; should a backward pass outside Sequential.backward need it, `_out`
  moves it back from the next conv's planar input (refused if that was overwritten since);
- inside Sequential.backward (`wired`), that next conv writes its input gradient, masked by
  the ReLU between, straight into the first one's planar d(out) (`dz_in`, stamped `dz_from`)
  and leaves its NHWC dx unwritten: the ReLU passes it through and the first conv takes
  `dz_in`;
- inside Sequential.backward a 2x2/2 max pool after a direct conv (and its fused ReLU) leaves
  its dx unwritten and hands its d(out) and window positions to the conv (`pool_from`), which
  routes and masks them in the pass that fills its dz.
Every value is the one the NHWC path computes (the same bits, tests/nn/test_seed_speed_paths.py).
A layer called on its own, or by anything but Sequential.forward/backward (or
Sequential.handing_over), reads and writes NHWC as before.
"""

from __future__ import annotations

from typing import ClassVar, cast

import numpy as np

from distnn.nn import direct, threads
from distnn.nn.conv import common
from distnn.nn.conv.algorithm import ConvAlgorithm, ConvLayer


def _direct_pad1(layer: ConvLayer | None) -> bool:
    """A direct conv with padding 1: planar rows as wide as those of the conv before it."""
    return layer is not None and layer.algorithm == Direct.name and layer.pad == 1


def _takes_from(layer: ConvLayer) -> ConvLayer | None:
    """The direct conv before `layer` whose output `layer` may take in planar form."""
    prev = layer.handoff.before
    if prev is None or prev.algorithm != Direct.name or not _direct_pad1(layer) \
            or prev.handoff.after is not layer:
        return None
    return prev


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
        hand = layer.handoff
        fill = hand.planar_from is not x  # else the conv before wrote planar
        hand.planar_from = hand.out_in = hand.pooled_from = None
        hand.planar_gen += fill
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
        nxt = hand.after
        if nxt is not None and _takes_from(nxt) is layer:
            wp = layer.width + 2 * layer.pad
            nxt_planar = nxt.buffer("planar", self._shapes(nxt, n)["planar"], zero=True)
            nxt_start = wp + 1
        else:
            nxt = None
            nxt_planar = layer.buffer("nxt_unused", (0, f, 0))
            nxt_start = 0
        pool = hand.pool_after
        fuse_pool = pool is not None and hand.skip_out
        if pool is not None and fuse_pool:  # the max pool after, computed here
            pool_shape = (n,) + cast(tuple[int, ...], pool.out_shape)
            pout = pool.buffer("out", pool_shape)
            parg = pool.buffer("arg", pool_shape, np.int32)
        else:
            pout = layer.buffer("pout_unused", (0, 1, 1, f))
            parg = layer.buffer("parg_unused", (0, 1, 1, f), np.int32)
        # Inside Sequential.forward `out` goes on only to the next conv (through the ReLU) or
        # the pool computed here: it is left unwritten, and written if a backward pass outside
        # Sequential.backward asks for it (_out).
        write_out = not (hand.skip_out and (nxt is not None or fuse_pool))

        def job(w: int, g: int) -> None:
            n0, n1 = groups[g]
            direct.forward(x[n0:n1], wf, layer.p["b"], out[n0:n1], layer.fuse_relu, layer.pad,
                           planar[n0:n1], even[w], odd[w], fill, nxt_planar[n0:n1], nxt_start,
                           write_out, pout[n0:n1], parg[n0:n1])

        threads.run(job, range(len(groups)))
        if nxt is not None:
            nxt.handoff.planar_from = out
            nxt.handoff.planar_gen += 1
        if fuse_pool:
            hand.pooled_from = out
        if not write_out:
            hand.out_in = (nxt_planar, nxt.handoff.planar_gen) if nxt is not None \
                else (None, hand.planar_gen)

    def backward(self, layer: ConvLayer, dout: np.ndarray, out: np.ndarray,
                 dx: np.ndarray | None) -> None:
        """(Masks the fused ReLU and sums the bias gradient in its own kernel.)"""
        hand = layer.handoff
        n, c, f = dout.shape[0], layer.channels, layer.filters
        shapes = self._shapes(layer, n)
        # Where d(out) is: 2 handed back by the conv after, 1 the pool's, 0 dout itself.
        bits = np.dtype(f"i{layer.p['W'].dtype.itemsize}")  # ints of the float's size
        dz_in = layer.buffer("dz_in_unused", (0, f, 1))
        pbits = layer.buffer("pbits_unused", (0, 1, 1, f), bits)
        parg = layer.buffer("parg_unused", (0, 1, 1, f), np.int32)
        pout = layer.buffer("pout_unused", (0, 1, 1, f))
        source = 0
        if hand.dz_from is dout:
            source, dz_in = 2, layer.buffer("dz_in", (n,) + shapes["dz"], zero=True)
        elif hand.pool_from is not None and hand.pool_from[0] is dout:
            source, (_, pdout, parg, pout) = 1, hand.pool_from
            pbits = pdout.view(bits)
        hand.dz_from = hand.pool_from = None
        if source == 0:
            self._out(layer, out)
        dout = np.ascontiguousarray(dout)
        wb = layer.buffer("Wb", (f, 3, 3, c))  # flipped in space, channels <-> filters
        wb[...] = layer.p["W"][::-1, ::-1].transpose(3, 0, 1, 2)
        # The kernel takes an array either way.
        dxa = layer.buffer("dx_unused", (0, layer.height, layer.width, c)) if dx is None else dx
        prev = _takes_from(layer) if hand.wired and dx is not None else None
        if prev is None:
            zp, zp_start, zp_relu = layer.buffer("zp_unused", (0, c, 0)), 0, False
        else:  # the input gradient into the conv before's dz_in, in its layout
            zp = prev.buffer("dz_in", (n,) + self._shapes(prev, n)["dz"], zero=True)
            q = 2 - prev.pad
            zp_start, zp_relu = q + q * (prev.width + 2 * prev.pad), prev.fuse_relu
        planar = self.planar
        groups = threads.groups(n)
        k = threads.workers(len(groups))
        dz = common.per_worker(layer, "dz", shapes["dz"], k, zero=True)
        acc = common.per_worker(layer, "acc", (f,), k, np.float64)
        even = common.per_worker(layer, "ox_even", shapes["ox_even"], k)
        odd = common.per_worker(layer, "ox_odd", shapes["ox_odd"], k)
        dws = layer.buffer("dW_groups", (len(groups), c, 3, 3, f))
        dbs = layer.buffer("db_groups", (len(groups), f))

        def job(w: int, g: int) -> None:
            n0, n1 = groups[g]
            direct.backward(planar[n0:n1], source, dout[n0:n1], pbits[n0:n1], parg[n0:n1],
                            pout[n0:n1], dz_in[n0:n1], out[n0:n1], layer.fuse_relu, wb, dws[g],
                            dbs[g], dxa[n0:n1], dx is not None, layer.pad, dz[w],
                            dz[w].view(bits), acc[w], even[w], odd[w], zp[n0:n1], zp_start,
                            zp_relu)

        threads.run(job, range(len(groups)))
        if prev is not None:
            prev.handoff.dz_from = dx  # left unwritten: the ReLU between passes it on
        dw = layer.buffer("dWf", (c, 3, 3, f))
        common.sum_groups(dws, dw)
        common.sum_groups(dbs, layer.g["b"])
        layer.g["W"][...] = dw.transpose(1, 2, 0, 3)

    def _out(self, layer: ConvLayer, out: np.ndarray) -> None:
        """Write the output that the last forward pass left unwritten (if it did): from the
        next conv's planar input, or computed again from this layer's, as long as that was not
        written since."""
        hand = layer.handoff
        if hand.out_in is None:
            return
        planar, gen = hand.out_in
        nxt = hand.after
        wp = layer.width + 2 * layer.pad
        if planar is not None and nxt is not None and nxt.handoff.planar_gen == gen:
            direct.planar_to_nhwc(planar, wp + 1, wp, out)
        elif planar is None and hand.planar_gen == gen:  # rare: no need for speed or threads
            n, f = out.shape[0], layer.filters
            x = np.empty((n, layer.height, layer.width, layer.channels), out.dtype)  # unread
            wf = layer.buffer("Wf", (layer.channels, 3, 3, f))  # the forward pass's filters
            empty = np.empty((0, f, 0), out.dtype)
            no_pool = np.empty((0, 1, 1, f), out.dtype)
            direct.forward(x, wf, layer.p["b"], out, layer.fuse_relu, layer.pad, self.planar,
                           layer.buffer("o_even0", self._shapes(layer, n)["o_even"]),
                           layer.buffer("o_odd0", self._shapes(layer, n)["o_odd"]), False,
                           empty, 0, True, no_pool, no_pool.astype(np.int32))
        else:
            raise RuntimeError(f"{getattr(layer, 'name', 'conv')}: its output was handed on "
                               f"without being written, and what it was computed from has "
                               f"changed since; run forward again")
        hand.out_in = None
