"""Input preparation cost against a cifar-net training step at batch 128.

Run: .venv/bin/python -m benchmarks.input_prep [--steps 8] [--threads 1]

CIFAR-shaped data (50000 x 32x32x3 uint8, random: the real archive is not available offline),
in memory and in the distnn HDF5 format; each batch is read, random-crop+flip augmented and
normalised to float32. The step is the cifar10.yaml model's forward+backward (distnn.nn) on
one worker. Prints the synchronous preparation time per batch, the step time, and the time the
training loop actually waits for input when the BatchIterator prefetches.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from distnn.data import (
    ArrayDataset,
    BatchIterator,
    H5Dataset,
    RandomCropFlip,
    ShardSampler,
    prepare_batch,
    write_h5,
)

BATCH = 128
NORM = (np.array([0.49, 0.48, 0.45], np.float32), np.array([0.25, 0.24, 0.26], np.float32))


def cifar_like(n: int = 50000, seed: int = 0) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                        rng.integers(0, 10, n), [str(i) for i in range(10)], "cifar-like", "train")


def prep_seconds(dataset, batches: int = 20) -> float:
    """Median seconds to prepare one batch of 128 (read + augment + normalise), no overlap."""
    sampler = ShardSampler(len(dataset), BATCH, 0, 1, seed=0)
    aug, times = RandomCropFlip(pad=4), []
    for step in range(batches):
        t0 = time.perf_counter()
        prepare_batch(dataset, sampler, step, NORM, aug)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def cifar_net():
    from distnn.config import load_config
    from distnn.nn import Sequential

    spec = list(load_config("cifar10").model)
    return Sequential(spec, (32, 32, 3), seed=0, dtype=np.float32)


def train_with_prefetch(model, dataset, steps: int) -> tuple[float, float]:
    """(median step seconds, mean seconds waiting in next()) over `steps` real steps."""
    sampler = ShardSampler(len(dataset), BATCH, 0, 1, seed=0)
    waits, step_times = [], []
    with BatchIterator(dataset, sampler, NORM, RandomCropFlip(pad=4)) as it:
        for i in range(steps + 1):
            t0 = time.perf_counter()
            x, y = next(it)
            t1 = time.perf_counter()
            model.forward_backward(x, y)
            if i:  # step 0 warms up (first-call allocations, Numba cache load)
                waits.append(t1 - t0)
                step_times.append(time.perf_counter() - t1)
    return float(np.median(step_times)), float(np.mean(waits))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=1, help="BLAS threads for the model step")
    args = p.parse_args(argv)
    from threadpoolctl import threadpool_limits

    data = cifar_like()
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(args.threads):
        h5 = H5Dataset(write_h5(Path(tmp) / "c.h5", {"train": data}, "cifar-like", ""), "train")
        prep_mem, prep_h5 = prep_seconds(data), prep_seconds(h5)
        model = cifar_net()
        step, wait = train_with_prefetch(model, h5, args.steps)
        h5.close()
    print(f"prepare batch {BATCH} (read+crop/flip+normalise): in memory {prep_mem * 1e3:.2f} ms, "
          f"HDF5 {prep_h5 * 1e3:.2f} ms")
    print(f"cifar-net step (forward+backward, {args.threads} BLAS thread(s)): {step * 1e3:.0f} ms")
    print(f"input cost / step: synchronous HDF5 {100 * prep_h5 / step:.2f} %, "
          f"waiting with prefetch {100 * wait / step:.2f} %")


if __name__ == "__main__":
    main()
