"""Read cost of a random batch from the distnn HDF5 format, for several chunk sizes.

Run: .venv/bin/python -m benchmarks.hdf5_read [--batch 128] [--repeats 50]
Writes MNIST-shaped (60000x28x28x1) and CIFAR-shaped (50000x32x32x3) random files to a temp
folder and prints, per chunk size, the median time to read `batch` random indices.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from distnn.data.base import ArrayDataset
from distnn.data.hdf5 import H5Dataset, chunk_samples, write_h5

SHAPES = {"mnist": (60000, (28, 28, 1)), "cifar": (50000, (32, 32, 3))}


def time_reads(path: Path, batch: int, repeats: int, contiguous: bool = False,
               seed: int = 0) -> float:
    """Median seconds to read `batch` random indices (a fresh draw each time), or a block of
    `batch` consecutive ones (as evaluation reads)."""
    rng = np.random.default_rng(seed)
    with H5Dataset(path, "train") as ds:
        times = []
        for _ in range(repeats):
            if contiguous:
                idx = np.arange(batch) + rng.integers(0, len(ds) - batch)
            else:
                idx = rng.choice(len(ds), batch, replace=False)
            t0 = time.perf_counter()
            ds.read(idx)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=50)
    p.add_argument("--chunk-kib", type=int, nargs="+", default=[1, 4, 16, 64, 256])
    args = p.parse_args(argv)
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        for kind, (n, shape) in SHAPES.items():
            images = rng.integers(0, 256, (n,) + shape, dtype=np.uint8)
            src = ArrayDataset(images, rng.integers(0, 10, n), [str(i) for i in range(10)],
                               kind, "train")
            for kib in args.chunk_kib:
                path = Path(tmp) / f"{kind}-{kib}.h5"
                t0 = time.perf_counter()
                write_h5(path, {"train": src}, kind, "benchmark", chunk_bytes=kib * 1024)
                wrote = time.perf_counter() - t0
                ms = 1e3 * time_reads(path, args.batch, args.repeats)
                block = 1e3 * time_reads(path, 256, args.repeats, contiguous=True)
                print(f"{kind:5s} chunk {kib:4d} KiB ({chunk_samples(shape, kib * 1024):4d} "
                      f"samples): read {args.batch} random {ms:5.2f} ms, 256 contiguous "
                      f"{block:5.2f} ms, write {wrote:5.2f} s, "
                      f"file {path.stat().st_size / 1e6:6.1f} MB")


if __name__ == "__main__":
    main()
