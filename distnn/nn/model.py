"""Sequential model built from plain-dict layer specs, with all parameters in flat buffers.

Every parameter and its gradient are views into two contiguous arrays, `model.params` and
`model.grads` (and non-trained state such as BatchNorm running statistics into `model.state`),
so an allreduce or an optimizer step is one call over one array.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from itertools import pairwise
from typing import Any, cast

import numpy as np
from numpy.typing import DTypeLike

from distnn.nn.activations import ReLU
from distnn.nn.base import Layer, Workspace
from distnn.nn.conv import Conv2D
from distnn.nn.conv.algorithm import Handoff
from distnn.nn.dense import Dense
from distnn.nn.errors import SpecError, StateError
from distnn.nn.jit import njit
from distnn.nn.losses import LOSSES
from distnn.nn.pool import MaxPool2D
from distnn.nn.registry import build_layers, check_sizes

_ALIGN = 16  # elements: each view starts on a 64-byte boundary for float32 BLAS/SIMD


class NoSpans:
    """Where a model reports its phases ("forward", "backward") to a timeline: nowhere. A
    recorder with the same `span` method (distnn/train/timeline.py) replaces it on traced runs."""

    def span(self, name: str) -> AbstractContextManager:
        return nullcontext()


NO_SPANS = NoSpans()
Slot = tuple[Layer, str, tuple[int, ...], int]  # (layer, array name, shape, offset)


def _layout(layers: Sequence[Layer],
            shapes_of: Callable[[Layer], dict[str, tuple[int, ...]]]) -> tuple[list[Slot], int]:
    """Offsets of every named array in one flat buffer, each aligned to _ALIGN elements."""
    slots: list[Slot] = []
    total = 0
    for layer in layers:
        for name, shape in shapes_of(layer).items():
            slots.append((layer, name, shape, total))
            total += -(-int(np.prod(shape)) // _ALIGN) * _ALIGN
    return slots, total


class Sequential:
    """A stack of layers. input_shape is per sample: (H, W, C) for images, (D,) for vectors.

    forward(x (N,)+input_shape, training) -> scores (N, K); backward(dscores) fills model.grads.
    The arrays returned by forward are work buffers reused by the next call: copy to keep them.
    """

    def __init__(self, specs: Sequence[dict[str, Any]], input_shape: Sequence[int],
                 seed: int = 0, dtype: DTypeLike = np.float32, extra_grad_slots: int = 0,
                 input_grad: bool = False) -> None:
        self.layers = build_layers(specs)
        self.specs = [dict(s) for s in specs]
        self.input_shape = tuple(int(d) for d in input_shape)
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise SpecError(f"model: dtype {self.dtype}, expected float32 or float64")
        shape = self.input_shape
        self.workspace = Workspace()  # the layers' transient work buffers (base.py)
        for layer in self.layers:
            shape = layer.build(shape, self.dtype)
            layer.workspace = self.workspace
        check_sizes(self.layers)
        self.output_shape = shape
        # The most elements an input gradient holds per sample (Workspace.reserve_input_grads).
        self._widest_input = max(int(np.prod(cast(tuple, layer.in_shape))) for layer in self.layers)
        # input_grad: backward returns d(loss)/d(inputs) (saliency maps, adversarial examples,
        # gradient checks); off in training, where nobody needs it.
        self.input_grad = input_grad
        self.layers[0].input_grad = input_grad
        self._fuse_relus()
        self._wired = self._wire()
        # Convs that hand their output to the next conv or compute the pool after them: they
        # need not write it in Sequential.forward.
        self._handing_on = [layer.handoff for layer in self.layers if isinstance(layer, Conv2D)
                            and (layer.handoff.after or layer.handoff.pool_after) is not None]
        self._bind(extra_grad_slots)
        self.frozen: tuple[str, ...] = ()
        self.backward_stop = 0  # backward runs layers[backward_stop:] (see freeze)
        self.train_offset = 0  # params[:train_offset] belong to the frozen prefix
        self.seed = seed
        self.spans: NoSpans = NO_SPANS
        # Called with i once backward has finished layers[i] (its gradients are final): a
        # data-parallel step starts the allreduce of the gradients that are ready.
        self.after_layer: Callable[[int], None] | None = None
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            layer.init_params(rng)

    def _fuse_relus(self) -> None:
        for prev, layer in pairwise(self.layers):
            if isinstance(layer, ReLU) and isinstance(prev, (Conv2D, Dense)):
                prev.fuse_relu = layer.fused = True
                layer.fused_backward = isinstance(prev, Conv2D)

    def _wire(self) -> list[Handoff | MaxPool2D]:
        """Tell each conv followed by a conv or a max pool, directly or through its fused ReLU,
        who its neighbour is: direct convs then hand planar data to each other and take the
        pool's d(out) (conv/direct.py; each checks at run time that the forms allow it).
        Returns what Sequential.backward switches on while it runs."""
        wired: list[Handoff | MaxPool2D] = []
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Conv2D):
                continue
            j = i + 2 if i + 2 < len(self.layers) and layer.fuse_relu else i + 1
            nxt = self.layers[j] if j < len(self.layers) else None
            if isinstance(nxt, Conv2D):
                layer.handoff.after, nxt.handoff.before = nxt, layer
                wired.append(nxt.handoff)
            elif isinstance(nxt, MaxPool2D) and nxt.size == nxt.stride == 2:
                layer.handoff.pool_after, nxt.producer = nxt, layer
                wired.append(nxt)
        return wired

    def _bind(self, extra: int) -> None:
        pslots, ptotal = _layout(self.layers, lambda layer: layer.param_shapes())
        sslots, stotal = _layout(self.layers, lambda layer: layer.state_shapes())
        self.params = np.zeros(ptotal, self.dtype)
        # `extra` trailing slots let a data-parallel step reduce a few scalars (loss sums,
        # a stop flag) in the same allreduce as the gradients: grad_buffer = grads + extra.
        self.grad_buffer = np.zeros(ptotal + extra, self.dtype)
        self.grads = self.grad_buffer[:ptotal]
        self.state = np.zeros(stotal, self.dtype)
        self.decay_mask = np.zeros(ptotal, self.dtype)
        self._named: dict[str, np.ndarray] = {}
        self._decayed: list[tuple[np.ndarray, np.ndarray]] = []
        self.decayed_of: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in self.layers]
        self._l1_work = np.empty(0, self.dtype)  # l1_term's scratch, allocated on first use
        index = {id(layer): i for i, layer in enumerate(self.layers)}
        for layer, name, shape, off in pslots:
            size = int(np.prod(shape))
            layer.p[name] = self.params[off:off + size].reshape(shape)
            layer.g[name] = self.grads[off:off + size].reshape(shape)
            self._named[f"{layer.name}.{name}"] = layer.p[name]
            if name in layer.decayed():
                self.decay_mask[off:off + size] = 1
                self._decayed.append((layer.p[name], layer.g[name]))
                self.decayed_of[index[id(layer)]].append(self._decayed[-1])
        for layer, name, shape, off in sslots:
            layer.s[name] = self.state[off:off + int(np.prod(shape))].reshape(shape)
            self._named[f"{layer.name}.{name}"] = layer.s[name]
        self.num_params = sum(p.size for layer in self.layers for p in layer.p.values())

    # -- computation --------------------------------------------------------------------------
    def forward(self, x: np.ndarray, training: bool = True) -> np.ndarray:
        """x: (N,) + input_shape of the model's dtype -> scores (N,) + output_shape. Frozen
        layers run in evaluation mode (see freeze). The result is a work buffer of the model
        (reused by the next call), never a view of the caller's x."""
        given = x
        with self.handing_over("forward"):
            for layer in self.layers:
                x = layer.forward(x, training and not layer.frozen)
        # Flatten and evaluation-mode dropout pass their input on as a view: a model made of
        # only such layers would hand back the caller's own array.
        return x.copy() if np.may_share_memory(x, given) else x

    def backward(self, dout: np.ndarray, overwrite: bool = False,
                 l2: float = 0.0, l1: float = 0.0) -> np.ndarray | None:
        """Back-propagate d(loss)/d(scores) after a forward pass; overwrites model.grads (those
        of the trained layers: the frozen prefix is not visited, see freeze), adding l2 * W and
        then l1 * sign(W) to the gradient of each decayed weight as soon as its layer is done
        (then `after_layer`).
        Returns d(loss)/d(inputs) for a model built with input_grad=True (and nothing frozen),
        else None. `dout` is left as it was (layers work in place on what they are given: a
        ReLU masks it) unless `overwrite` says the caller does not need it any more.
        """
        if not overwrite:
            dout = dout.copy()
        self.workspace.reserve_input_grads(dout.shape[0] * self._widest_input, self.dtype)
        with self.handing_over("backward"):
            for i in range(len(self.layers) - 1, self.backward_stop - 1, -1):
                # Only the first layer visited returns None (it computes no input gradient).
                dout = cast(np.ndarray, self.layers[i].backward(dout))
                self.layer_done(i, l2, l1)
        return dout

    @contextmanager
    def handing_over(self, phase: str) -> Iterator[None]:
        """While open, the layers that _wire linked hand data to each other in their own forms
        in this phase ("forward": a conv whose output only the next conv reads leaves its NHWC
        output unwritten; "backward": input gradients go straight into the layer before's
        planar buffers, and a max pool's d(out) to the conv before it). Sequential.forward
        and backward open it; whoever drives the layers one by one in the same order may too
        (benchmarks/step_throughput.py's per-layer profile)."""
        items: Sequence[Handoff | MaxPool2D] = self._wired if phase == "backward" else []
        hands = self._handing_on if phase == "forward" else []
        for item in items:
            item.wired = True
        for hand in hands:
            hand.skip_out = True
        try:
            yield
        finally:
            for item in items:
                item.wired = False
            for hand in hands:
                hand.skip_out = False

    def layer_done(self, i: int, l2: float = 0.0, l1: float = 0.0) -> None:
        """Layer i's gradients are complete: add l2 * W, then l1 * sign(W), to its decayed
        weights' gradients, then tell `after_layer`."""
        if l2:
            for w, g in self.decayed_of[i]:
                g += l2 * w
        if l1:
            for w, g in self.decayed_of[i]:
                g += self.l1_term(w, l1)
        if self.after_layer is not None:
            self.after_layer(i)

    # -- transfer: frozen layers, per-layer learning rates -------------------------------------
    def freeze(self, names: Sequence[str]) -> None:
        """Freeze the layers named (those with parameters): they are never updated, and a
        frozen BatchNorm normalises with its running statistics and leaves them unchanged (as
        Keras does). The layers before the first trained one (the frozen prefix) get no backward
        pass at all: it stops at that layer, which computes no input gradient, and their
        parameters, params[:train_offset], are not part of what a step reduces and updates.
        A frozen layer after a trained one still passes the gradient through (its parameters
        are kept by a learning-rate multiplier of 0, see lr_scale). KeyError naming an unknown
        layer; ValueError when nothing with parameters is left to train."""
        by_name = {layer.name: layer for layer in self.layers}
        for name in names:
            if name not in by_name:
                raise KeyError(f"{name!r} is not a layer of the model; expected one of "
                               f"{', '.join(by_name)}")
        self.frozen = tuple(names)
        for layer in self.layers:
            layer.frozen = layer.name in self.frozen
        trained = [i for i, layer in enumerate(self.layers) if layer.p and not layer.frozen]
        if not trained:
            raise ValueError(f"every layer with parameters is frozen ({', '.join(names)}); "
                             f"expected at least one to train")
        self.backward_stop = trained[0]
        for i, layer in enumerate(self.layers):
            layer.input_grad = i > self.backward_stop or (i == 0 == self.backward_stop
                                                          and self.input_grad)
        first = self.layers[self.backward_stop]
        self.train_offset = offset_in(self.params, next(iter(first.p.values())))

    def lr_scale(self, mults: dict[str, float]) -> np.ndarray | None:
        """(P - train_offset,) float64 multipliers of the learning rate for params[train_offset:]: a
        layer's entries take the value of the first glob of `mults` (fnmatch on layer names,
        in the order given) that matches its name, 1 if none does, and 0 when it is frozen.
        None when every multiplier is 1 (nothing to scale)."""
        scale = np.ones(self.params.size)  # float64: the multipliers as written
        for layer in self.layers:
            glob = next((g for g in mults if fnmatch.fnmatchcase(layer.name, g)), None)
            value = 0.0 if layer.frozen else mults[glob] if glob is not None else 1.0
            for arr in layer.p.values():
                off = offset_in(self.params, arr)
                scale[off:off + arr.size] = value
        scale = scale[self.train_offset:]
        return None if bool(np.all(scale == 1)) else scale.copy()

    def forward_backward(self, x: np.ndarray, y: np.ndarray, loss: str = "softmax",
                         l2: float = 0.0, denom: int | None = None,
                         before_backward: Callable[[float, np.ndarray], None] | None = None,
                         l1: float = 0.0) -> tuple[float, np.ndarray]:
        """One training pass: returns (data loss + L2 and L1 penalties, scores). Gradients in
        model.grads.

        `denom` divides summed losses (default N); with L2 (l2/2 * sum W^2) or L1 (l1 * sum |W|,
        both: the elastic net), each call adds the full penalty scaled by N/denom so that
        summing the calls of workers sharing one global batch adds it exactly once.
        `before_backward(value, scores)` sees the result before the backward pass.
        """
        fn = LOSSES.get(loss)
        if fn is None:
            raise SpecError(f"model: loss {loss!r}, expected one of {', '.join(LOSSES)}")
        with self.spans.span("forward"):
            scores = self.forward(x, training=True)
            value, dscores = fn(scores, y, denom=denom)
        coef = 0.0
        if l2:
            share = x.shape[0] / (denom or x.shape[0])
            coef = l2 * share
            value += coef * self.l2_penalty()
        coef1 = 0.0
        if l1:  # nothing of it when 0: an L2-only pass keeps its bits
            coef1 = l1 * (x.shape[0] / (denom or x.shape[0]))
            value += coef1 * self.l1_penalty()
        if before_backward is not None:
            before_backward(value, scores)
        with self.spans.span("backward"):
            self.backward(dscores, overwrite=True, l2=coef, l1=coef1)  # the loss's own array
        return value, scores

    def l2_penalty(self) -> float:
        """0.5 * sum(W^2) over the decayed weights."""
        return sum((0.5 * float(np.vdot(w, w)) for w, _ in self._decayed), 0.0)

    def add_l2_(self, coef: float) -> float:
        """Add coef * W to the gradient of every decayed weight; return 0.5 * sum(W^2)."""
        for w, g in self._decayed:
            g += coef * w
        return self.l2_penalty()

    def l1_penalty(self) -> float:
        """sum(|W|) over the decayed weights, summed element after element in float64."""
        return sum((abs_sum(w.reshape(-1)) for w, _ in self._decayed), 0.0)

    def l1_term(self, w: np.ndarray, coef: float) -> np.ndarray:
        """coef * sign(W) (sign(0) = 0) for one decayed weight `w` of this model, in a scratch
        array of w's shape that the next call overwrites (one buffer, allocated on first use,
        sized for the largest decayed weight)."""
        if self._l1_work.size == 0:
            self._l1_work = np.empty(max((v.size for v, _ in self._decayed), default=0),
                                     self.dtype)
        out = self._l1_work[:w.size].reshape(w.shape)
        np.sign(w, out=out)
        out *= coef
        return out

    def reseed(self, *key: int) -> None:
        """Give every stochastic layer (dropout) a generator keyed by `key`, e.g. (seed, step,
        rank): masks then depend only on where training is, so a resumed run draws the same masks
        as an uninterrupted one without saving generator state.
        """
        for index, layer in enumerate(self.layers):
            if hasattr(layer, "rng"):
                layer.rng = np.random.default_rng([*key, index])

    def predict(self, x: np.ndarray, batch: int = 256) -> np.ndarray:
        """Scores in evaluation mode (dropout off, BatchNorm running statistics), as a new array."""
        outs = [self.forward(x[i:i + batch], training=False).copy()
                for i in range(0, len(x), batch)]
        return np.concatenate(outs) if outs else np.zeros((0,) + self.output_shape, self.dtype)

    # -- state ----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of every named parameter and state array, e.g. 'conv0.W',
        'batchnorm2.running_var'."""
        return {name: arr.copy() for name, arr in self._named.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Copy arrays in after checking that names and shapes match exactly (StateError if not)."""
        missing = sorted(set(self._named) - set(state))
        extra = sorted(set(state) - set(self._named))
        if missing or extra:
            raise StateError(f"model state: missing arrays {missing}, unexpected arrays {extra}")
        for name, arr in self._named.items():
            value = np.asarray(state[name])
            if value.shape != arr.shape:
                raise StateError(
                    f"model state: {name} has shape {value.shape}, expected {arr.shape}")
        for name, arr in self._named.items():
            arr[...] = state[name]

    def summary(self) -> str:
        """A table of each layer's output shape and parameter count, and the total."""
        rows = [f"{'layer':<16}{'description':<34}{'output':<18}{'params':>10}"]
        rows.append(f"{'input':<16}{'':<34}{str(self.input_shape):<18}{0:>10}")
        for layer in self.layers:
            count = sum(p.size for p in layer.p.values())
            rows.append(f"{layer.name:<16}{layer.describe():<34}{str(layer.out_shape):<18}"
                        f"{count:>10}")
        rows.append(f"{'total':<68}{self.num_params:>10}")
        return "\n".join(rows)


def offset_in(base: np.ndarray, view: np.ndarray) -> int:
    """Element offset of `view` inside the flat buffer `base`."""
    return (view.__array_interface__["data"][0] - base.__array_interface__["data"][0]) \
        // base.itemsize


@njit
def abs_sum(x: np.ndarray) -> float:
    """Sum of |x| in float64, one element after the other: the same bits on every CPU."""
    acc = 0.0
    for i in range(x.size):
        acc += abs(np.float64(x[i]))
    return acc
