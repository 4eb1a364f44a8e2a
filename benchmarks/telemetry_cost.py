"""The cost of training telemetry (train/telemetry.py) at the log: defaults, on the cifar net.

Run:
    python -m benchmarks.telemetry_cost [--batch 128] [--steps 100] [--rounds 3] [--threads 1]

One process, local communicator, the plain step (DataParallelStep) on random data. Two figures,
side by side:
- measured parts: the median time of a training step, and the median times of what telemetry
  adds: every step (the window sums), every log.every_steps steps (a step line), every
  log.layers_every_steps steps (the parameter copy for the update, per-layer norms, the
  evaluation forward of 32 samples with its statistics, the layers line); amortised per step as
  the defaults schedule them, as a fraction of the step (the target: at most 2 %);
- end to end: --rounds rounds of --steps steps with telemetry on (defaults) and off, alternating
  so that the machine's noise hits both alike; the ratio of the medians (noisier: the parts
  above are the figure to quote), and the time spent inside telemetry's code in those rounds
  (the parameter copy, step_done) per step, first layers line (the replica's build) included,
  and the median time of the step alone in rounds with and without telemetry.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.scaling import CIFAR


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()

    from threadpoolctl import threadpool_limits

    from distnn.comm import create_communicator
    from distnn.config import Config, LogConfig
    from distnn.nn import Sequential
    from distnn.nn import threads as nn_threads
    from distnn.optim import make_optimizer
    from distnn.train.metrics import MetricsLog
    from distnn.train.state import RunState
    from distnn.train.step import EXTRA_SLOTS, DataParallelStep
    from distnn.train.telemetry import Telemetry

    rng = np.random.default_rng(0)
    x = rng.random((args.batch, 32, 32, 3), dtype=np.float32)
    y = rng.integers(0, 10, args.batch)
    log = LogConfig()
    cfg = Config(model=tuple(CIFAR), log=log)
    comm = create_communicator("local")
    with threadpool_limits(args.threads), nn_threads.limit(args.threads), \
            tempfile.TemporaryDirectory() as tmp:
        model = Sequential(CIFAR, (32, 32, 3), seed=0, extra_grad_slots=EXTRA_SLOTS)
        fn = DataParallelStep(model, make_optimizer("momentum", mu=0.9), comm)
        tel = Telemetry(cfg, model, MetricsLog(Path(tmp) / "metrics.jsonl", True), 0)
        state, before = RunState(), np.empty_like(model.params)
        inside = [0.0]  # seconds spent in telemetry's own code during the end-to-end rounds
        alone: dict[bool, list[float]] = {True: [], False: []}  # the step itself, per mode

        def train_step(telemetry: bool) -> None:
            due = telemetry and tel.layers_due(state.step + 1)
            t0 = time.perf_counter()
            if due:
                np.copyto(before, model.params)
            t1 = time.perf_counter()
            res = fn(x, y, args.batch, 1e-3, False, step=state.step)
            t2 = time.perf_counter()
            alone[telemetry].append(t2 - t1)
            state.step += 1
            if telemetry:
                delta = None
                if due:
                    before[...] -= model.params
                    delta = before
                tel.step_done(state, res.loss, res.correct, res.count, 1e-3, x, delta)
                inside[0] += (t1 - t0) + (time.perf_counter() - t2)

        for _ in range(3):
            train_step(False)  # compile and warm up
        alone[False].clear()
        # Measured parts.
        step_times, window, line, layers = [], [], [], []
        for _ in range(20):
            t0 = time.perf_counter()
            res = fn(x, y, args.batch, 1e-3, False, step=state.step)
            step_times.append(time.perf_counter() - t0)
        for i in range(20):
            t0 = time.perf_counter()
            tel.loss_sum += res.loss * res.count  # what step_done adds on every step
            tel.correct += res.correct
            tel.count += res.count
            tel.peak_lr = max(tel.peak_lr, 1e-3)
            window.append(time.perf_counter() - t0)
            state.step = (i + 1) * log.every_steps
            t0 = time.perf_counter()
            tel._step_line(state, 1e-3)
            line.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            np.copyto(before, model.params)
            before[...] *= np.float32(1e-3)  # as costly as the subtraction, an update in band
            tel._layers_line(state, x, before, 1e-3)
            layers.append(time.perf_counter() - t0)
        step = statistics.median(step_times)
        per_step = (statistics.median(window) + statistics.median(line) / log.every_steps
                    + statistics.median(layers) / log.layers_every_steps)
        print(f"cifar net, batch {args.batch}, {args.threads} thread(s), log defaults "
              f"(every_steps {log.every_steps}, layers_every_steps {log.layers_every_steps})")
        print(f"measured parts: step {step * 1e3:.1f} ms; step line {np.median(line) * 1e3:.3f}"
              f" ms; layers line {np.median(layers) * 1e3:.1f} ms; amortised "
              f"{per_step * 1e3:.3f} ms per step = {per_step / step:.2%} of the step")
        # End to end, alternating.
        timed: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(args.rounds):
            for on in (False, True):
                t0 = time.perf_counter()
                for _ in range(args.steps):
                    train_step(on)
                timed[on].append((time.perf_counter() - t0) / args.steps)
        off, on = statistics.median(timed[False]), statistics.median(timed[True])
        own = inside[0] / (args.rounds * args.steps)
        print(f"end to end ({args.rounds} rounds of {args.steps} steps): off {off * 1e3:.1f} "
              f"ms/step, on {on * 1e3:.1f} ms/step, cost {on / off - 1:+.2%}; telemetry's own "
              f"code took {own * 1e3:.2f} ms per step of those rounds = {own / off:.2%}; "
              f"the step alone (median / mean) {statistics.median(alone[True]) * 1e3:.1f} / "
              f"{statistics.mean(alone[True]) * 1e3:.1f} ms with telemetry, "
              f"{statistics.median(alone[False]) * 1e3:.1f} / "
              f"{statistics.mean(alone[False]) * 1e3:.1f} ms without")


if __name__ == "__main__":
    main()
