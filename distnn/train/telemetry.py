"""What a run reports beyond its epoch lines: "step" lines (the loss and accuracy of the last
log.every_steps steps, globally reduced), "layers" lines (every log.layers_every_steps steps: per
layer the update ratio, gradient and weight norms, activation statistics and histogram, and the
fraction of dead ReLU units) and "warning" lines, each also one line on stderr.

Gradients and updates are the reduced ones (equal on every rank). Activations are measured on
rank 0 alone, in evaluation mode (no dropout, BatchNorm running statistics: nothing drawn or
updated, so training goes on exactly as without telemetry), on at most ACT_SAMPLES samples of its
shard of the step's batch, with the parameters after the step's update, through a replica of the
model (its own layers and buffers: the model's, sized for training, stay as they are). All lines
are rank 0's.
"""

from __future__ import annotations

import math

import numpy as np

from distnn import console
from distnn.config import Config
from distnn.nn import Sequential
from distnn.nn.activations import ReLU
from distnn.nn.lockstep import Lockstep

ACT_SAMPLES = 32  # samples of rank 0's shard whose activations a layers line describes
BINS = 32  # activation histogram bins, evenly over [min, max]
BAND = (1e-4, 1e-2)  # update ratios outside it for log.warn_window layers lines: a warning
ANNEALED = 0.1  # below this fraction of the highest rate so far, small updates are on purpose
DEAD = 0.5  # more than this fraction of a ReLU layer's units dead: a warning
FLAT = 0.02  # step losses within 2 % of ln(C) for 2 * warn_window step lines: not learning


class Telemetry:
    """Owned by the coordinator: `step_done` after every update, `epoch_done` after the epoch's
    validation, `reset` after a rollback."""

    def __init__(self, cfg: Config, model, metrics, rank: int):
        self.cfg, self.model, self.metrics = cfg.log, model, metrics
        self.is_root = rank == 0
        self.softmax = cfg.train.loss == "softmax"
        self.chance = math.log(int(np.prod(model.output_shape)))
        base = model.params.ctypes.data
        # Each trained layer with parameters: (name, [(offset, size) of its arrays in
        # model.params]); a frozen one is reported as such (its update ratio is 0 by design).
        self.slices = [(layer.name, [((p.ctypes.data - base) // p.itemsize, p.size)
                                     for p in layer.p.values()])
                       for layer in model.layers if layer.p and not layer.frozen]
        self.frozen = [layer.name for layer in model.layers if layer.frozen]
        self.viewer: Sequential | None = None  # a replica for the activations (rank 0, once)
        self.out_of_band: dict[str, int] = {}
        self.peak_lr = 0.0
        self.warned: set[tuple[str, str]] = set()
        self.reset()

    def reset(self) -> None:
        """Start a new window of steps (at the start, and after a rollback)."""
        self.loss_sum, self.correct, self.count, self.flat = 0.0, 0, 0, 0

    def layers_due(self, step: int) -> bool:
        """Whether the update that makes `step` steps done gets a layers line."""
        every = self.cfg.layers_every_steps
        return bool(every) and step % every == 0

    # -- every step -------------------------------------------------------------------------------
    def step_done(self, state, loss: float, correct: int, count: int, lr: float,
                  x: np.ndarray, delta: np.ndarray | None) -> None:
        """After the update of step state.step - 1. `delta`: the parameters before the update
        minus after (when layers_due), `x` this rank's normalised inputs of the step."""
        self.loss_sum += loss * count
        self.correct += correct
        self.count += count
        self.peak_lr = max(self.peak_lr, lr)
        every = self.cfg.every_steps
        if every and state.step % every == 0:
            self._step_line(state, lr)
        if delta is not None and self.is_root:
            self._layers_line(state, x, delta, lr)

    def _step_line(self, state, lr: float) -> None:
        mean = self.loss_sum / max(self.count, 1)
        self.metrics.add(dict(epoch=state.epoch, step=state.step, split="step", loss=mean,
                              accuracy=self.correct / max(self.count, 1), lr=lr, n=self.count))
        window = 2 * self.cfg.warn_window
        self.flat = self.flat + 1 if self.softmax and abs(mean - self.chance) \
            <= FLAT * self.chance else 0
        if self.flat >= window:
            self.warn(state, "not_learning", f"the training loss has stayed at ln(C) = "
                      f"{self.chance:.4f} (within {FLAT:.0%}) for {window} step lines: the "
                      f"network is not learning (learning rate too low, or a bug)")
        elif self.flat == 0:
            self.warned.discard(("not_learning", ""))
        self.loss_sum, self.correct, self.count = 0.0, 0, 0

    # -- per layer --------------------------------------------------------------------------------
    def _layers_line(self, state, x: np.ndarray, delta: np.ndarray, lr: float) -> None:
        model, params, grads = self.model, self.model.params, self.model.grads
        report: dict[str, dict] = {layer.name: {} for layer in model.layers}  # model order
        for name in self.frozen:
            report[name]["frozen"] = True
        for name, arrays in self.slices:
            d = w = g = 0.0
            for off, size in arrays:
                d += float(np.vdot(delta[off:off + size], delta[off:off + size]))
                w += float(np.vdot(params[off:off + size], params[off:off + size]))
                g += float(np.vdot(grads[off:off + size], grads[off:off + size]))
            ratio = math.sqrt(d) / max(math.sqrt(w), 1e-30)
            report[name].update(update_ratio=ratio, grad_norm=math.sqrt(g),
                                weight_norm=math.sqrt(w))
        if self.viewer is None:
            # Its own layers and work buffers, the model's parameters and state: the model's
            # buffers, sized for the training batch, are left alone.
            self.viewer = Lockstep(model)._replica(0)
        out = x[:ACT_SAMPLES]
        for layer in self.viewer.layers if len(out) else ():  # a shard may be empty
            out = layer.forward(out, False)
            report[layer.name].update(activation_stats(out, isinstance(layer, ReLU)))
        self.metrics.add(dict(epoch=state.epoch, step=state.step, split="layers",
                              layers=report))
        annealed = lr < ANNEALED * self.peak_lr
        for name, entry in report.items():
            self._check_layer(state, name, entry, annealed)

    def _check_layer(self, state, name: str, entry: dict, annealed: bool) -> None:
        """`annealed`: the schedule has taken the rate below ANNEALED of its peak, so updates
        below the band are what it asks for (no warning for those)."""
        ratio = entry.get("update_ratio")
        if ratio is not None:
            outside = ratio > BAND[1] or (ratio < BAND[0] and not annealed)
            self.out_of_band[name] = self.out_of_band.get(name, 0) + 1 if outside else 0
            if self.out_of_band[name] >= self.cfg.warn_window:
                side = "below" if ratio < BAND[0] else "above"
                self.warn(state, "update_ratio", f"{name}: update ratio {ratio:.2g} {side} "
                          f"[{BAND[0]:g}, {BAND[1]:g}] for {self.out_of_band[name]} layers "
                          f"lines (about 1e-3 is healthy: learning rate too "
                          f"{'low' if side == 'below' else 'high'}?)", name)
            elif not outside:
                self.warned.discard(("update_ratio", name))
        dead = entry.get("dead_frac")
        if dead is not None:
            if dead > DEAD:
                self.warn(state, "dead_relu", f"{name}: {dead:.0%} of its ReLU units are dead "
                          f"(never active on the batch)", name)
            else:
                self.warned.discard(("dead_relu", name))

    # -- every epoch ------------------------------------------------------------------------------
    def epoch_done(self, state, epoch: int, train_accuracy: float,
                   val_accuracy: float) -> None:
        gap = train_accuracy - val_accuracy
        if gap > self.cfg.gap_warning:
            self.warn(state, "overfitting", f"epoch {epoch}: train accuracy {train_accuracy:.4f}"
                      f" is {gap:.4f} above val accuracy {val_accuracy:.4f} (log.gap_warning "
                      f"{self.cfg.gap_warning:g}): overfitting; more regularisation or data?")
        else:
            self.warned.discard(("overfitting", ""))

    def warn(self, state, kind: str, message: str, layer: str = "") -> None:
        """One metrics line and one stderr line (rank 0), once until the condition clears."""
        if (kind, layer) in self.warned:
            return
        self.warned.add((kind, layer))
        record = dict(epoch=state.epoch, step=state.step, split="warning", warning=kind,
                      message=message)
        if layer:
            record["layer"] = layer
        self.metrics.add(record)
        if self.is_root:
            console.err(f"distnn train: warning: step {state.step}: {message}")


def activation_stats(out: np.ndarray, relu: bool) -> dict:
    """Mean, std, count and a BINS-bin histogram of a layer's outputs; for a ReLU the fraction
    of its units (each output position and channel) that are zero for every sample. Non-finite
    values (a diverging run) are counted in "nonfinite" and left out of the histogram; the mean
    and std then are NaN or inf."""
    flat = out.reshape(len(out), int(np.prod(out.shape[1:])))
    finite = np.isfinite(flat)
    values = flat if finite.all() else flat[finite]
    lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    hi = hi if hi > lo else lo + 1.0  # one value (a dead layer): bins of width 1/BINS
    counts, _ = np.histogram(values, bins=BINS, range=(lo, hi))
    with np.errstate(invalid="ignore"):  # inf - inf in the std of a layer holding inf
        stats = {"act_mean": float(flat.mean(dtype=np.float64)) if flat.size else 0.0,
                 "act_std": float(flat.std(dtype=np.float64)) if flat.size else 0.0,
                 "count": int(flat.size), "hist": counts.tolist(), "hist_range": [lo, hi]}
    if values.size != flat.size:
        stats["nonfinite"] = int(flat.size - values.size)
    if relu and len(flat):
        stats["dead_frac"] = float(np.mean(~np.any(flat > 0, axis=0)))
    return stats
