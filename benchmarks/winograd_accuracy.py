"""Does Winograd F(4x4, 3x3) change training? The bundled `fashion_mnist` config trained with
the conv algorithms as chosen (F(4x4) on its 28x28 convs) and with F(4x4) left out (F(2x2) and
direct, as before it), for a few seeds, in one process; the validation curve and the test
accuracy of each, and the spread across seeds (the noise F(4x4)'s difference is judged by).

    python -m benchmarks.winograd_accuracy [--data-dir ../shared/data] [--epochs 2]
        [--seeds 0,1] [--out runs/winograd_accuracy]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np

import distnn
from distnn.nn.conv import layer as conv_layer
from distnn.nn.conv.winograd4 import Winograd4


def curve(run_dir: Path) -> list[float]:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [m["accuracy"] for m in lines if m["split"] == "val"]


def train(data_dir: str, epochs: int, seed: int, out: Path, with_f4: bool) -> tuple:
    """(the layers' algorithms, val accuracy per epoch, test accuracy) of one run."""
    chosen = conv_layer.ALGORITHMS
    if not with_f4:
        conv_layer.ALGORITHMS = tuple(a for a in chosen if a is not Winograd4)
    try:
        shutil.rmtree(out, ignore_errors=True)
        result = distnn.train("fashion_mnist", run_dir=out, overrides=[
            f"data.data_dir={data_dir}", f"train.epochs={epochs}", f"seed={seed}",
            "early_stopping.enabled=false"])
        model = distnn.load(out / "checkpoints" / "last.h5")
        algorithms = [layer.algorithm for layer in model.network.layers if layer.kind == "conv"]
    finally:
        conv_layer.ALGORITHMS = chosen
    assert result.ok and result.test is not None
    return algorithms, curve(out), result.test["accuracy"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--out", type=Path, default=Path("runs/winograd_accuracy"))
    args = p.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve())
    tests: dict[bool, list[float]] = {True: [], False: []}
    print(f"fashion_mnist, {args.epochs} epochs, one process")
    print(f"{'algorithms':<44} {'seed':>4}  {'val accuracy per epoch':<28} {'test':>7}")
    for seed in (int(s) for s in args.seeds.split(",")):
        for with_f4 in (True, False):
            tag = "f4x4" if with_f4 else "f2x2"
            algos, val, test = train(data_dir, args.epochs, seed, args.out / f"{tag}-{seed}",
                                     with_f4)
            tests[with_f4].append(test)
            print(f"{','.join(algos):<44} {seed:>4}  "
                  f"{' '.join(f'{100 * v:.2f}' for v in val):<28} {100 * test:>6.2f}%",
                  flush=True)
    f4, f2 = np.array(tests[True]), np.array(tests[False])
    print(f"test accuracy: with F(4x4) {100 * f4.mean():.2f} % (seeds {100 * np.ptp(f4):.2f} "
          f"apart), without {100 * f2.mean():.2f} % ({100 * np.ptp(f2):.2f} apart); "
          f"difference per seed: {', '.join(f'{100 * d:+.2f}' for d in f4 - f2)} points")
    if len(f4) > 1:  # paired by seed: the same data order and initial weights
        d = f4 - f2
        se = d.std(ddof=1) / np.sqrt(len(d))
        print(f"mean difference {100 * d.mean():+.3f} points, standard error {100 * se:.3f} "
              f"({len(d)} seeds; within noise if |mean| < 2 standard errors)")


if __name__ == "__main__":
    main()
