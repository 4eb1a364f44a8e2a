"""Transfer from MNIST to Fashion-MNIST with 1,000 labelled samples: from scratch, fixed
features + a linear classifier, fine-tuning with the early convs frozen, and kNN on pixels and
on features; accuracy on the 10,000 test images and wall time of each, in one run.

Run (from the repository, with the data in ../shared/data):
    python -m benchmarks.transfer [--data-dir ../shared/data] [--out runs/transfer]
        [--ranks 2] [--pretrain-epochs 3] [--epochs 30] [--pretrained CKPT]

1. Pretrain the bundled `mnist` config for --pretrain-epochs on all of MNIST (skipped with
   --pretrained).
2. The 1,000 labelled samples: `data.train_size: 1000` (a seeded subset of Fashion-MNIST's
   training split; the same 1,000 for every method, `distnn knn --train-size` takes the same),
   200 of them held out for validation (early stopping, the best epoch).
   (a) from scratch: the `fashion_mnist` config on them;
   (b) `distnn features` of the pretrained net's last hidden layer (relu12, 128 values) for
       all of Fashion-MNIST, then a linear classifier (flatten + dense 10) on the same 1,000;
   (c) fine-tuning: `train.init_from` the pretrained net and a new head (`train.reset`),
       either conv0 and conv2 frozen (`freeze_until: conv2`) and the rest at the full rate, or
       every layer trained with the convs at a tenth of the rate (`optimizer.lr_mult`);
   (d) kNN (L2, k in 1, 3, 5, 10 by 5-fold cross-validation) on the pixels and on the codes.
First, the training step of the mnist net (one process, one thread, batch 64, alternating
rounds) with nothing, conv0 + conv2, and all four convs frozen: img/s and the floats each
allreduce sends (what a frozen prefix saves: no backward pass through it, no place in the
buffer). --speed-only stops there.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

DISTNN = [sys.executable, "-m", "distnn.cli"]


def distnn(args: list[str], ranks: int, env: dict) -> tuple[str, float]:
    """Run a distnn command (under mpiexec for ranks > 1); its stdout and wall time."""
    cmd = DISTNN + args
    if ranks > 1:
        cmd = [str(Path(sys.executable).parent / "mpiexec"), "-n", str(ranks)] + cmd
    t0 = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        sys.exit(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return out.stdout, seconds


def test_accuracy(stdout: str) -> float:
    return float(stdout.split("test accuracy ")[1].split()[0])


def train_speed(run_dir: Path) -> float:
    """Mean train img/s over the run's epoch lines."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    speeds = [m["images_per_s"] for m in lines if m.get("split") == "train"]
    return sum(speeds) / max(len(speeds), 1)


def step_speeds(batch: int = 64, steps: int = 15, rounds: int = 3) -> list[tuple]:
    """The mnist net's training step (one process, one thread) with nothing, conv0 + conv2, and
    every conv frozen: (freeze_until, img/s (median of rounds), floats reduced per step)."""
    import numpy as np
    from threadpoolctl import threadpool_limits

    from distnn.comm import create_communicator
    from distnn.config import load_config
    from distnn.nn import threads as nn_threads
    from distnn.train.setup import build_model, build_optimizer
    from distnn.train.step import DataParallelStep

    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 28, 28, 1), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    comm = create_communicator("local")
    cases = {}
    for until in (None, "conv2", "conv7"):
        cfg = load_config("mnist", [f"train.freeze_until={until}"] if until else [])
        model = build_model(cfg, (28, 28, 1), 10)
        cases[until] = (model, DataParallelStep(model, build_optimizer(cfg, model), comm))
    times: dict = {until: [] for until in cases}
    with threadpool_limits(1), nn_threads.limit(1):
        for _ in range(rounds):  # alternating, so the machine's noise hits every case alike
            for until, (_, step) in cases.items():
                step(x, y, batch, 0.01, False)  # warm
                t0 = time.perf_counter()
                for i in range(steps):
                    step(x, y, batch, 0.01, False, step=i)
                times[until].append(batch * steps / (time.perf_counter() - t0))
    return [(until or "nothing", sorted(v)[len(v) // 2],
             cases[until][0].grad_buffer.size - cases[until][0].train_offset)
            for until, v in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--out", default="runs/transfer")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--labelled", type=int, default=1000)
    p.add_argument("--pretrained", default=None, help="skip step 1: this MNIST checkpoint")
    p.add_argument("--speed-only", action="store_true", help="only the step speeds")
    args = p.parse_args()
    print("the mnist net's step, batch 64, 1 thread: frozen prefix -> img/s, floats reduced")
    for until, speed, floats in step_speeds():
        print(f"  freeze_until {until:<8} {speed:8.0f} img/s  {floats:>8} floats per allreduce")
    if args.speed_only:
        return
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DISTNN_DATA_DIR": str(Path(args.data_dir).resolve()),
           "DISTNN_OFFLINE": "1"}
    rows = []
    if args.pretrained:
        ckpt = Path(args.pretrained)
    else:
        stdout, sec = distnn(["train", "mnist", "--run-dir", str(out / "mnist"), "--set",
                              f"train.epochs={args.pretrain_epochs}"], args.ranks, env)
        ckpt = out / "mnist" / "checkpoints" / "best.h5"
        rows.append(("pretrain on MNIST (60,000 labelled)", test_accuracy(stdout), sec, ""))
    few = ["--set", f"data.train_size={args.labelled}", "--set", "data.val_size=200",
           "--set", f"train.epochs={args.epochs}", "--set", "train.global_batch=64",
           "--set", "early_stopping.patience=10"]
    stdout, sec = distnn(["train", "fashion_mnist", "--run-dir", str(out / "scratch"), *few],
                         args.ranks, env)
    rows.append(("(a) from scratch", test_accuracy(stdout), sec,
                 f"{train_speed(out / 'scratch'):.0f} train img/s"))

    codes = out / "codes.h5"
    codes.unlink(missing_ok=True)
    _, sec_f = distnn(["features", str(ckpt), "--layer", "relu12", "--dataset", "fashion_mnist",
                       "--out", str(codes)], args.ranks, env)
    linear = out / "linear.yaml"
    # The codes as they come (ReLU outputs of O(1)): standardising each of the 128 features on
    # 800 samples divides the near-constant ones by almost nothing, and the validation loss
    # explodes (measured: 131 after one epoch).
    linear.write_text(f"name: linear\ndata: {{dataset: {codes}, normalize: false}}\n"
                      f"model:\n  - {{type: flatten}}"
                      f"\n  - {{type: dense, units: 10}}\noptimizer: {{name: momentum}}\n"
                      f"schedule: {{name: cosine, base_lr: 0.05}}\n"
                      f"early_stopping: {{monitor: val_accuracy, mode: max}}\n")
    stdout, sec = distnn(["train", str(linear), "--run-dir", str(out / "linear"), *few],
                         args.ranks, env)
    rows.append(("(b) fixed features (relu12) + linear", test_accuracy(stdout), sec_f + sec,
                 f"features of 70,000 images {sec_f:.0f} s"))

    stdout, sec = distnn(["train", "fashion_mnist", "--run-dir", str(out / "finetune"), *few,
                          "--set", f"train.init_from={ckpt}", "--set",
                          "train.freeze_until=conv2", "--set", "train.reset=[dense13]"],
                         args.ranks, env)
    rows.append(("(c) fine-tune, conv0 + conv2 frozen, new head", test_accuracy(stdout), sec,
                 f"{train_speed(out / 'finetune'):.0f} train img/s"))
    stdout, sec = distnn(["train", "fashion_mnist", "--run-dir", str(out / "finetune_all"),
                          *few, "--set", f"train.init_from={ckpt}", "--set",
                          "train.reset=[dense13]", "--set", "optimizer.lr_mult={conv*: 0.1}"],
                         args.ranks, env)
    rows.append(("(c) fine-tune all, convs at 0.1 x the rate", test_accuracy(stdout), sec,
                 f"{train_speed(out / 'finetune_all'):.0f} train img/s"))

    knn = ["knn", "--k", "1,3,5,10", "--folds", "5", "--train-size", str(args.labelled)]
    for what, source in (("pixels", ["--dataset", "fashion_mnist"]),
                         ("features", ["--features", str(codes)])):
        stdout, sec = distnn([*knn, *source], args.ranks, env)
        chosen = next(line for line in stdout.splitlines() if line.startswith("chosen"))
        accuracy = float(chosen.split("test accuracy ")[1].split()[0])
        rows.append((f"(d) kNN on {what}", accuracy, sec, chosen.split()[1]))
    print(f"Fashion-MNIST, {args.labelled} labelled training samples, {args.ranks} ranks; test "
          f"accuracy on 10,000 images")
    print(f"{'method':<48}{'test acc':>10}{'time':>10}  notes")
    for name, acc, sec, note in rows:
        print(f"{name:<48}{100 * acc:>9.2f}%{sec:>9.1f}s  {note}")


if __name__ == "__main__":
    main()
