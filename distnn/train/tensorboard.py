"""`log.tensorboard: true`: the metrics lines also as TensorBoard event files in
<run_dir>/tensorboard/, written with tensorboardX (the `tensorboard` extra).

tensorboardX because it is the maintained standalone writer of the format: it needs neither
TensorFlow nor PyTorch, only numpy and protobuf, and writes a histogram from bucket counts
(`add_histogram_raw`), which is what a layers line holds. TensorBoard itself reads the files.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from distnn.config import ConfigError

INSTALL = "pip install 'distnn[tensorboard]'"
SCALARS = ("loss", "accuracy", "lr", "images_per_s", "grad_norm", "update_ratio")
LAYER_SCALARS = ("update_ratio", "grad_norm", "weight_norm", "act_mean", "act_std", "dead_frac")


def check_available() -> None:
    """ConfigError (on every rank alike) when tensorboardX is not installed."""
    if importlib.util.find_spec("tensorboardX") is None:
        raise ConfigError(f"log.tensorboard: true needs tensorboardX, which is not installed: "
                          f"{INSTALL}")


class TensorBoardSink:
    """Takes every metrics record (rank 0) and writes its numbers as scalars, a layers line's
    histograms as histograms and a warning as text, at global step record['step']."""

    def __init__(self, folder: Path):
        from tensorboardX import SummaryWriter

        self.writer = SummaryWriter(logdir=str(folder), flush_secs=10)

    def __call__(self, record: dict) -> None:
        step, split = int(record.get("step", 0)), record.get("split", "")
        if split == "layers":
            for name, entry in record["layers"].items():
                self._layer(name, entry, step)
        elif split == "warning":
            self.writer.add_text("warnings", f"{record['warning']}: {record['message']}", step)
        else:
            for key in SCALARS:
                value = record.get(key)
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{split}/{key}", value, step)

    def _layer(self, name: str, entry: dict, step: int) -> None:
        for key in LAYER_SCALARS:
            if key in entry:
                self.writer.add_scalar(f"layers/{name}/{key}", entry[key], step)
        hist: list[int] = entry.get("hist") or []
        n = sum(hist)  # the finite values (a diverging layer has others)
        if n:
            lo, hi = entry["hist_range"]
            mean, std = entry["act_mean"], entry["act_std"]
            limits = [lo + (hi - lo) * (i + 1) / len(hist) for i in range(len(hist))]
            self.writer.add_histogram_raw(
                f"activations/{name}", min=lo, max=hi, num=n, sum=mean * n,
                sum_squares=(std * std + mean * mean) * n, bucket_limits=limits,
                bucket_counts=hist, global_step=step)

    def close(self) -> None:
        self.writer.close()
