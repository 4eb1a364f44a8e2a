"""Forward and backward of several groups of one batch, each on its own, in lockstep.

A world-size invariant step (distnn/train/invariant.py) cuts the global batch into a fixed
number of groups and computes each group's gradient on its own, so that what a group computes
never depends on which rank runs it or which other groups share that rank. Layers keep the
inputs of their backward pass in themselves, so each group runs on a replica of the model: its
own layer objects (work buffers, caches), the parameters and state of the model itself, and
the gradient buffer the caller hands over for that group.

The replicas advance layer by layer together, because a BatchNorm layer needs the statistics of
every group before any group can go on: at such a layer each group's sums are handed to
`reduce` (which sums them over all groups, exactly, in a fixed order, across ranks when the
layer is `sync`), and the layer then normalises with the result. The backward pass does the same
with the sums the BatchNorm gradient needs. Every rank calls `reduce` equally often, in the same
order, whether or not it holds groups: it is a collective.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np

from distnn.nn.conv import Conv2D
from distnn.nn.losses import LOSSES
from distnn.nn.model import Sequential, offset_in
from distnn.nn.regularize import BatchNorm, Dropout, sample_keys

# reduce(rows, sync) -> total: rows (g, 2, C) float64 (this rank's groups, in group order) ->
# (2, C), the sum over every group of the batch (of this rank only when not sync).
Reduce = Callable[[np.ndarray, bool], np.ndarray]


@dataclass
class Group:
    """One group of the batch on this rank: inputs, labels, dataset indices (the dropout keys)
    and the flat gradient buffer its replica writes."""

    x: np.ndarray
    y: np.ndarray
    indices: np.ndarray
    grads: np.ndarray


class Lockstep:
    """Replicas of `model` that run groups of one batch side by side (see the module doc)."""

    def __init__(self, model: Sequential):
        self.model = model
        self.replicas: list[Sequential] = []
        self._slots = [(i, name, arr.shape, offset_in(model.grads, arr))
                       for i, layer in enumerate(model.layers) for name, arr in layer.g.items()]

    def _replica(self, j: int) -> Sequential:
        while len(self.replicas) <= j:
            m = self.model
            rep = Sequential(m.specs, m.input_shape, seed=0, dtype=m.dtype)
            if m.frozen:
                rep.freeze(m.frozen)
            for mine, theirs in zip(rep.layers, m.layers, strict=True):
                mine.p = dict(theirs.p)  # the model's parameters and state, not copies
                mine.s = dict(theirs.s)
                if isinstance(mine, Conv2D):
                    mine.algorithm = cast(Conv2D, theirs).algorithm
            # Its own buffers are never used: drop every reference to them.
            rep.params = rep.grads = rep.grad_buffer = rep.state = np.empty(0, m.dtype)
            rep.decay_mask, rep._named, rep._decayed = np.empty(0, m.dtype), {}, []
            rep.decayed_of = [[] for _ in rep.layers]
            for layer in rep.layers:
                layer.g = {}
            self.replicas.append(rep)
        return self.replicas[j]

    def _bind(self, rep: Sequential, grads: np.ndarray) -> None:
        for i, name, shape, off in self._slots:
            rep.layers[i].g[name] = grads[off:off + int(np.prod(shape))].reshape(shape)

    def run(self, groups: Sequence[Group], count: int, denom: int, step: int, seed: int,
            reduce: Reduce, loss: str, l2: float = 0.0,
            before_backward: Callable[[list[tuple[float, int]]], None] | None = None,
            l1: float = 0.0) -> list[tuple[float, int]]:
        """Forward and backward of every group, training mode. `count`: samples of the batch
        (all groups, all ranks) a synced BatchNorm normalises over (one that does not sync: this
        rank's groups); `denom`: what divides the summed loss of kind `loss` (a key of LOSSES).
        Returns each group's (loss sum / denom, correct), also handed to `before_backward`
        before the backward pass. Each group's decayed weights get l2 * W, then l1 * sign(W),
        added to their gradients once their layer is done, then the model's `after_layer` hook
        is called.
        Collective when a BatchNorm layer syncs (see `reduce`). `step` and `seed` key the
        dropout masks."""
        fn = LOSSES[loss]
        local = sum(len(grp.y) for grp in groups)
        reps = [self._replica(j) for j in range(len(groups))]
        for rep, grp in zip(reps, groups, strict=True):
            self._bind(rep, grp.grads)
        with self.model.spans.span("forward"):
            xs = [grp.x for grp in groups]
            for i, layer in enumerate(self.model.layers):
                mine = [rep.layers[i] for rep in reps]
                if isinstance(layer, BatchNorm) and not layer.frozen:
                    xs = _norm_forward(layer, cast(list[BatchNorm], mine), xs, reduce,
                                       count if layer.sync else local)
                    continue
                if isinstance(layer, Dropout):
                    for drop, grp in zip(cast(list[Dropout], mine), groups, strict=True):
                        drop.keys = sample_keys(seed, i, step, grp.indices)
                xs = [lay.forward(x, not lay.frozen) for lay, x in zip(mine, xs, strict=True)]
            results, douts = [], []
            for x, grp in zip(xs, groups, strict=True):
                value, dscores = fn(x, grp.y, denom=denom)
                results.append((value, int(np.count_nonzero(x.argmax(axis=1) == grp.y))))
                douts.append(dscores)
        if before_backward is not None:
            before_backward(results)
        with self.model.spans.span("backward"):
            for i in range(len(self.model.layers) - 1, self.model.backward_stop - 1, -1):
                layer = self.model.layers[i]
                mine = [rep.layers[i] for rep in reps]
                if isinstance(layer, BatchNorm) and not layer.frozen:
                    douts = _norm_backward(layer, cast(list[BatchNorm], mine), douts, reduce,
                                           count if layer.sync else local)
                else:  # the first layer visited returns None: the loop ends there
                    douts = [cast(np.ndarray, lay.backward(d))
                             for lay, d in zip(mine, douts, strict=True)]
                if l2:
                    for lay in mine:
                        for name in layer.decayed():
                            lay.g[name] += l2 * layer.p[name]
                if l1:  # the same term for every group: computed once
                    for name in layer.decayed():
                        term = self.model.l1_term(layer.p[name], l1)
                        for lay in mine:
                            lay.g[name] += term
                if self.model.after_layer is not None:
                    self.model.after_layer(i)
        return results


def _norm_forward(layer: BatchNorm, mine: list[BatchNorm], xs: list[np.ndarray],
                  reduce: Reduce, samples: int) -> list[np.ndarray]:
    """A BatchNorm layer's training forward pass over the groups, with the moments of all."""
    total = reduce(_stack([lay.group_sums(x) for lay, x in zip(mine, xs, strict=True)], layer),
                   layer.sync)
    mean, var = layer.batch_moments(total, samples * _positions(layer))
    return [lay.normalize(x, mean, var) for lay, x in zip(mine, xs, strict=True)]


def _norm_backward(layer: BatchNorm, mine: list[BatchNorm], douts: list[np.ndarray],
                   reduce: Reduce, samples: int) -> list[np.ndarray]:
    total = reduce(_stack([lay.backward_sums(d) for lay, d in zip(mine, douts, strict=True)],
                          layer), layer.sync)
    return [lay.backward_finish(d, total, samples * _positions(layer))
            for lay, d in zip(mine, douts, strict=True)]


def _positions(layer: BatchNorm) -> int:
    """Rows per sample the layer's statistics cover (H*W of a map, 1 of a vector)."""
    return int(np.prod(cast(tuple[int, ...], layer.in_shape)[:-1]))


def _stack(rows: list[np.ndarray], layer: BatchNorm) -> np.ndarray:
    c = cast(tuple[int, ...], layer.in_shape)[-1]
    return np.stack(rows) if rows else np.zeros((0, 2, c), np.float64)

