"""16-bit gradient transport on real data: the bundled `fashion_mnist` config under
`mpiexec -n RANKS` with `comm.compress` none, bf16 and fp16, in one run; test accuracy, the
difference to float32, wall time, and the bytes each rank sends per step.

    python -m benchmarks.compress [--data-dir ../shared/data] [--epochs 2] [--ranks 2]
        [--out runs/compress] [--codecs none,bf16,fp16]

Every run has the same seed and data order: only the gradients' transport differs. Bytes per
step: the gradient buffer (4 bytes an element, or 2 compressed) times 2 (N-1)/N, what a
reduce-scatter + allgather moves per rank.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from benchmarks.transfer import distnn, test_accuracy
from distnn.config import load_config
from distnn.nn import Sequential


def accuracy_by_codec(codecs: list[str], epochs: int, ranks: int, out: Path,
                      env: dict) -> dict[str, tuple[float, float]]:
    """{codec: (test accuracy, wall seconds)} of the fashion_mnist config for `epochs`."""
    found = {}
    for codec in codecs:
        run_dir = out / codec
        shutil.rmtree(run_dir, ignore_errors=True)
        stdout, seconds = distnn(["train", "fashion_mnist", "--run-dir", str(run_dir),
                                  "--set", f"train.epochs={epochs}",
                                  "--set", f"comm.compress={codec}"], ranks, env)
        found[codec] = (test_accuracy(stdout), seconds)
    return found


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--out", default="runs/compress")
    p.add_argument("--codecs", default="none,bf16,fp16")
    args = p.parse_args(argv)
    env = {**os.environ, "DISTNN_DATA_DIR": str(Path(args.data_dir).resolve()),
           "OPENBLAS_NUM_THREADS": "1"}
    codecs = args.codecs.split(",")
    found = accuracy_by_codec(codecs, args.epochs, args.ranks, Path(args.out), env)
    cfg = load_config("fashion_mnist")
    params = Sequential(list(cfg.model), (28, 28, 1)).params.size
    share = 2 * (args.ranks - 1) / args.ranks
    base = found.get("none", (float("nan"), 0.0))[0]
    print(f"fashion_mnist, {args.epochs} epochs, {args.ranks} MPI ranks, {params:,} parameters")
    print("| comm.compress | test accuracy | vs float32 | wall time | MB sent per rank per step |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for codec, (acc, seconds) in found.items():
        width = 4 if codec == "none" else 2
        print(f"| {codec} | {100 * acc:.2f} % | {100 * (acc - base):+.2f} | {seconds:.0f} s | "
              f"{params * width * share / 1e6:.2f} |")


if __name__ == "__main__":
    main()
