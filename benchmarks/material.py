"""The options of issue 18 on real data (Fashion-MNIST), each beside its reference, in one run:

- a linear softmax classifier: full-batch L-BFGS against mini-batch SGD with momentum;
- an MLP with no penalty, L2, L1 and both (the elastic net): test accuracy and the share of
  first-layer weights below 1e-3 in magnitude (what L1 is for);
- a small conv net with ReLU against PReLU;
- an MLP on channel mean/std, mean-image and PCA-whitened inputs.

    python -m benchmarks.material [--data-dir ../shared/data] [--ranks 1] [--out runs/material]
        [--only lbfgs,penalty,prelu,preprocess]

Every run: `distnn train` on a YAML written to --out, seed 0, validation 5,000 images held out
of the training split, test accuracy of the best-validation weights; wall time of the whole
command (start-up included).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

import numpy as np
import yaml

from benchmarks.transfer import distnn, test_accuracy
from distnn.train.checkpoint import load_checkpoint

LINEAR = [{"type": "flatten"}, {"type": "dense", "units": 10}]
MLP = [{"type": "flatten"}, {"type": "dense", "units": 256}, {"type": "relu"},
       {"type": "dense", "units": 10}]


def conv(act: dict) -> list[dict]:
    return [{"type": "conv", "filters": 16, "kernel": 3, "pad": 1}, dict(act),
            {"type": "maxpool", "size": 2},
            {"type": "conv", "filters": 32, "kernel": 3, "pad": 1}, dict(act),
            {"type": "maxpool", "size": 2}, {"type": "flatten"},
            {"type": "dense", "units": 10}]


def config(name: str, model: list[dict], data_dir: str, epochs: int, optimizer: dict,
           lr: float = 0.05, **sections) -> dict:
    cfg = {"name": name, "seed": 0, "model": model,
           "data": {"dataset": "fashion_mnist", "data_dir": data_dir, "val_size": 5000},
           "train": {"epochs": epochs, "global_batch": 128},
           "optimizer": optimizer,
           "schedule": {"name": "constant", "base_lr": lr},
           "early_stopping": {"enabled": False},
           "checkpoint": {"every_epochs": 0}}
    for key, value in sections.items():
        cfg.setdefault(key, {}).update(value)
    return cfg


MOMENTUM = {"name": "momentum", "mu": 0.9}


def runs(data_dir: str, only: set[str]) -> list[tuple[str, str, dict]]:
    """(group, label, config) of every run asked for."""
    out = []
    if "lbfgs" in only:
        out += [
            ("lbfgs", "SGD momentum, 10 epochs, batch 128",
             config("sgd", LINEAR, data_dir, 10, MOMENTUM, 0.01, train={"l2": 1e-4})),
            ("lbfgs", "L-BFGS, 100 iterations (full batch, history 10)",
             config("lbfgs", LINEAR, data_dir, 100, {"name": "lbfgs"}, 1.0,
                    train={"l2": 1e-4, "global_batch": 5000})),
        ]
    if "penalty" in only:
        for label, train in [("none", {}), ("l2 1e-4", {"l2": 1e-4}), ("l1 2e-5", {"l1": 2e-5}),
                             ("elastic net: l1 2e-5 + l2 1e-4", {"l1": 2e-5, "l2": 1e-4})]:
            out.append(("penalty", label, config("penalty", MLP, data_dir, 5, MOMENTUM,
                                                 0.02, train=train)))
    if "prelu" in only:
        for label, act in [("relu", {"type": "relu"}), ("prelu (init 0.25)", {"type": "prelu"})]:
            out.append(("prelu", label, config("act", conv(act), data_dir, 2, MOMENTUM, 0.02)))
    if "preprocess" in only:
        for label, data in [("channel_mean_std", {"preprocess": "channel_mean_std"}),
                            ("mean_image", {"preprocess": "mean_image"}),
                            ("pca_whiten, all 784 components", {"preprocess": "pca_whiten"}),
                            ("pca_whiten, 100 components",
                             {"preprocess": "pca_whiten", "pca_components": 100})]:
            out.append(("preprocess", label, config("pre", MLP, data_dir, 3, MOMENTUM, 0.01,
                                                    data=data)))
    return out


def small_weights(run_dir: Path) -> float:
    """The share of the first dense layer's weights below 1e-3 in magnitude (last.h5)."""
    snap = load_checkpoint(run_dir / "checkpoints" / "last.h5")
    w = next(v for k, v in snap.model.items() if k.endswith(".W"))
    return float(np.mean(np.abs(w) < 1e-3))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--ranks", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/material"))
    p.add_argument("--only", default="lbfgs,penalty,prelu,preprocess")
    args = p.parse_args(argv)
    data_dir = str(Path(args.data_dir).resolve())
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    print(f"Fashion-MNIST (55,000 train / 5,000 validation / 10,000 test), {args.ranks} "
          f"process(es), {os.cpu_count()} cores")
    print(f"{'what':<12} {'run':<50} {'test acc':>8} {'seconds':>8}  notes")
    for i, (group, label, cfg) in enumerate(runs(data_dir, set(args.only.split(",")))):
        run_dir = args.out / f"{i:02d}-{cfg['name']}"
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        path = run_dir.with_suffix(".yaml")
        path.write_text(yaml.safe_dump(cfg))
        stdout, seconds = distnn(["train", str(path), "--run-dir", str(run_dir)], args.ranks,
                                 env)
        note = ""
        if group == "penalty":
            note = f"first-layer |w| < 1e-3: {100 * small_weights(run_dir):.1f} %"
        print(f"{group:<12} {label:<50} {100 * test_accuracy(stdout):>7.2f}% {seconds:>8.1f}  "
              f"{note}", flush=True)


if __name__ == "__main__":
    main()
